-- route_match: the compiled route matcher (moonring.router) on tables of 10 .. 10,000 routes,
-- next to the naive ordered scan it replaces. Requests are plain tables (method, path, host):
-- what the real req object costs to produce those fields is in lua_api.lua.
--   usage: luajit bench/micro/route_match.lua [SECONDS_PER_CASE]
package.path = arg[0]:gsub("[^/]*$", "") .. "../../lua/?.lua;" .. package.path
local router = require "moonring.router"
local seconds = tonumber(arg[1]) or 1

-- A mix like a real table: exact API paths, prefixes, virtual hosts (exact and wildcard),
-- method-restricted prefixes; the last route is a catch-all only in the "with default" case.
local function make_routes(n)
  local routes = {}
  for i = 1, n do
    local k = i % 5
    local r
    if k == 0 then r = { exact = "/svc" .. i .. "/item" }
    elseif k == 1 then r = { path = "/p" .. i .. "/" }
    elseif k == 2 then r = { path = "/", host = { "h" .. i .. ".example.com" } }
    elseif k == 3 then r = { path = "/m" .. i .. "/", method = { "POST", "PUT" } }
    else r = { exact = "/x", host = { "*.w" .. i .. ".example.com" } } end
    r.name = "r" .. i
    routes[i] = r
  end
  return routes
end

-- One third early hits (first 10% of the table), one third late hits (last 10%), one third misses.
local function make_requests(n, count)
  math.randomseed(42)
  local reqs = {}
  local function hit(i)
    local k = i % 5
    if k == 0 then return { method = "GET", path = "/svc" .. i .. "/item", host = "api.example.com" } end
    if k == 1 then return { method = "GET", path = "/p" .. i .. "/users/42", host = "api.example.com" } end
    if k == 2 then return { method = "GET", path = "/index.html", host = "h" .. i .. ".example.com" } end
    if k == 3 then return { method = "POST", path = "/m" .. i .. "/upload", host = "api.example.com" } end
    return { method = "GET", path = "/x", host = "a.w" .. i .. ".example.com" }
  end
  for j = 1, count do
    local kind = j % 3
    local tenth = math.max(1, math.floor(n / 10))
    if kind == 0 then reqs[j] = hit(math.random(1, tenth))
    elseif kind == 1 then reqs[j] = hit(math.random(n - tenth + 1, n))
    else reqs[j] = { method = "GET", path = "/nothing/here/at/all", host = "unknown.example.org" } end
  end
  return reqs
end

local function measure(match, reqs, secs)
  local nreq = #reqs
  local done, acc = 0, 0
  local t0 = os.clock()
  local t1
  repeat
    for j = 1, nreq do acc = acc + match(reqs[j]) end
    done = done + nreq
    t1 = os.clock()
  until t1 - t0 >= secs
  return done / (t1 - t0), acc
end

print(string.format("%-7s %-9s %14s %10s %14s %10s  %s", "routes", "matcher", "requests/s", "ns/req",
  "naive req/s", "speedup", "check"))
for _, n in ipairs { 10, 100, 1000, 10000 } do
  local routes = make_routes(n)
  local reqs = make_requests(n, 3000)
  local compiled, naive = router.compile(routes), router.naive(routes)
  for j = 1, #reqs do -- the two must agree before their speeds mean anything
    local a, b = compiled(reqs[j]), naive(reqs[j])
    if a ~= b then error(("disagree on %s %s: %d vs %d"):format(reqs[j].host, reqs[j].path, a, b)) end
  end
  local rc = measure(compiled, reqs, seconds)
  local rn = measure(naive, reqs, n >= 1000 and seconds / 2 or seconds)
  print(string.format("%-7d %-9s %14.0f %10.1f %14.0f %9.1fx  %s", n, "compiled", rc, 1e9 / rc, rn, rc / rn,
    "agrees with naive on " .. #reqs .. " requests"))
end
