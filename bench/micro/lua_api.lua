-- lua_api: ns per call of the Lua request API, through the same code as in the proxy: the
-- runtime's req/res objects (moonring.runtime) calling the core over LuaJIT FFI, on a request
-- whose head the real HTTP/1 codec parsed (src/lua/lua_test_api.h; core from libmoonring_ffi.so).
--   usage: luajit bench/micro/lua_api.lua [SECONDS_PER_CASE] [path/to/libmoonring_ffi.so]
local here = arg[0]:gsub("[^/]*$", "")
package.path = here .. "../../lua/?.lua;" .. here .. "../../lua/?/init.lua;" .. package.path
local ffi = require "ffi"
local seconds = tonumber(arg[1]) or 1
-- global: the runtime reaches the core through ffi.C, as in the server
local corelib = ffi.load(arg[2] or os.getenv("MOONRING_FFI_LIB") or (here .. "../../build/libmoonring_ffi.so"), true)
ffi.cdef [[
void *mr_lua_test_client_new(const char *head, size_t n);
int mr_lua_test_client_reset(void *c);
void mr_lua_test_client_unrespond(void *c);
void mr_lua_test_client_respond_as_upstream(void *c);
void mr_lua_test_client_free(void *c);
]]
local C = ffi.C
local _ = corelib -- keep the library loaded (a collected clib is dlclose()d)
local rt = require "moonring.runtime"

local HEAD = "GET /api/v1/users/12345/orders?limit=20&offset=40 HTTP/1.1\r\n" ..
  "Host: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n" ..
  "Accept: application/json\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n" ..
  "Connection: keep-alive\r\nX-Request-Id: 7f3c9a2e-5b1d-4e8f-9a6c-2d4b8e1f0a37\r\n\r\n"
local c = C.mr_lua_test_client_new(HEAD, #HEAD)
assert(c ~= nil, "the test request does not parse")
local st = rt._state(c)
ffi.cdef [[ int mr_metrics_test_worker(int id); ]]
assert(C.mr_metrics_test_worker(0) == 0)
local metrics = require "moonring.metrics"
local hits = metrics.counter("bench_hits_total", "Hits.", { "route" })
local lat = metrics.histogram("bench_seconds", "Latency.")
local queue = metrics.gauge("bench_queue", "Queue.")
local plain = { n = 0 }
assert(type(hits.cells) == "table")
hits:inc(1, "api")
assert(type(hits.cells.api) == "cdata", "metrics slots are not C memory")
local req, res = st.req, st.res

-- Runs body(i) in batches of `batch` calls, `after()` between batches, for ~seconds of CPU; ns per call.
local function ns_per_call(body, batch, after)
  local n, t0, t1 = 0, os.clock(), nil
  repeat
    for i = 1, batch do body(i) end
    if after then after() end
    n = n + batch
    t1 = os.clock()
  until t1 - t0 >= seconds
  return (t1 - t0) * 1e9 / n
end

local sink
local cases = {
  { "empty Lua call (loop floor)", function() sink = nil end },
  { "req:header (present)", function() sink = req:header("user-agent") end },
  { "req:header (absent)", function() sink = req:header("x-missing") end },
  { "req.path (cached after first use)", function() sink = req.path end },
  { "req.path (first use in a request)", function()
      rawset(req, "path", nil); rawset(req, "_target", nil); sink = req.path end },
  { "req.method (first use in a request)", function() rawset(req, "method", nil); sink = req.method end },
  { "req:set_header", function() sink = req:set_header("x-bench", "1") end, 10,
      function() C.mr_lua_test_client_reset(c) end },
  { "req:respond(200, body) (+ unrespond)", function()
      sink = req:respond(200, "hello"); C.mr_lua_test_client_unrespond(c) end },
  { "req:respond(200, body, 1 header)", function()
      sink = req:respond(200, "hello", { ["content-type"] = "text/plain" }); C.mr_lua_test_client_unrespond(c) end },
  { "res:set_header", function() sink = res:set_header("x-bench", "1") end, 10,
      function() C.mr_lua_test_client_reset(c); req:respond(200, "x") end },
  -- moonring.metrics on this thread's C slots (the thread registered as a worker above)
  { "metrics counter:inc(1, label)", function() hits:inc(1, "api") end },
  { "metrics histogram:observe(v)", function(i) lat:observe(i * 1e-4) end },
  { "metrics gauge:set(v)", function(i) queue:set(i) end },
  { "plain Lua table increment (reference)", function() plain.n = plain.n + 1 end },
}

req:respond(200, "x") -- res:* needs a response to act on
for _, case in ipairs(cases) do
  local name, body, batch, after = case[1], case[2], case[3] or 1000, case[4]
  ns_per_call(body, batch, after) -- warm up: let the JIT compile it
  local best, reset = math.huge, 0
  for _ = 1, 3 do best = math.min(best, ns_per_call(body, batch, after)) end
  local note = ""
  if after then
    -- Header edits accumulate (a set marks the old field deleted and appends), so the request is
    -- re-parsed every `batch` calls; that re-parse is measured alone and taken out.
    reset = math.huge
    for _ = 1, 3 do reset = math.min(reset, ns_per_call(function() end, 1, after)) end
    note = string.format("  (measured %.1f, minus re-parse %.1f / %d calls)", best, reset, batch)
  end
  print(string.format("%-40s %8.1f ns/call%s", name, best - reset / batch, note))
end
rt.finish(c)
C.mr_lua_test_client_free(c)

-- The whole two-filter chain of bench/run's moonring-lua variant, per request, through the
-- runtime's entry points as the core calls them (run REQUEST, run RESPONSE, finish), without
-- the C side of lua_pcall. The request path is /x, so req:set_upstream is not reached (it needs
-- a live worker).
local cfgfile = os.tmpname()
local f = assert(io.open(cfgfile, "w"))
f:write([[return { listen = { "127.0.0.1:1" }, upstreams = { origin = { servers = { "127.0.0.1:2" } } },
  routes = { { path = "/", upstream = "origin", filters = {
    { on_request = function(req, ctx)
        local v = req:header("x-bench")
        if req.path:sub(1, 5) == "/api/" then req:set_upstream("origin") end
        req:set_header("x-chain", "1")
      end },
    { on_response = function(res, ctx) res:set_header("x-served-by", "moonring") end } } } } }]])
f:close()
rt.init(cfgfile)
os.remove(cfgfile)
local HEAD2 = HEAD:gsub("^GET [^ ]*", "GET /x")
local c2 = C.mr_lua_test_client_new(HEAD2, #HEAD2)
local function one_request()
  C.mr_lua_test_client_reset(c2)
  rt.run(1, 1, c2)
  C.mr_lua_test_client_respond_as_upstream(c2)
  rt.run(1, 3, c2)
  rt.finish(c2)
end
local function reset_only() C.mr_lua_test_client_reset(c2); C.mr_lua_test_client_respond_as_upstream(c2) end
ns_per_call(one_request, 1000)
local best, base = math.huge, math.huge
for _ = 1, 3 do
  best = math.min(best, ns_per_call(one_request, 1000))
  base = math.min(base, ns_per_call(reset_only, 1000))
end
print(string.format("%-40s %8.1f ns/request  (measured %.1f, minus re-parse %.1f)", "two-filter chain (bench/run's)",
  best - base, best, base))
C.mr_lua_test_client_free(c2)
