-- Cold-miss storm: every connection of a thread asks for the same new object at once; when
-- they have all been answered they move on to the next one. Both threads walk the same
-- sequence, so each object is requested by every connection at about the same moment.
-- Arguments: URL prefix (unique per run), connections per thread.
local prefix, per, n = "x", 50, 0
function init(args)
  prefix = args[1] or prefix
  per = tonumber(args[2]) or per
end
function request()
  local obj = math.floor(n / per)
  n = n + 1
  return wrk.format("GET", "/storm/" .. prefix .. "/" .. obj)
end
