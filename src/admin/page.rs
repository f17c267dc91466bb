//! `GET /`: the status page, one self-contained HTML file (inline CSS and JS, no external
//! assets) that polls `/status.json` and draws its charts as inline SVG.

pub const HTML: &str = include_str!("status.html");
