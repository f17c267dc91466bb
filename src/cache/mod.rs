pub mod memcached;
