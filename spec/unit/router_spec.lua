-- The compiled route matcher (moonring.router) against the naive ordered scan, on many random
-- route tables and requests: same winning route, same req.params, and the same `match` calls in
-- the same order (first matching route wins, exactly).
local router = require "moonring.router"

local SEGS = { "a", "b", "ab", "c", "api", "v1", "a;x" }
local HOSTS = { "a.com", "b.a.com", "x.b.a.com", "c.org", "A.com", "", ".a.com" }
local HOST_PATS = { "a.com", "b.a.com", "c.org", "*.a.com", "*.b.a.com", "*.org", "x.b.a.com" }
local METHODS = { "GET", "POST", "PUT" }
local PATTERNS = { "'/a/' {:id: [a-z]+ :} .*", "'/' {:x: [a-z]+ :} '/' {:y: [a-z0-9]+ :}", "'/api' .*" }

local function pick(rng, t) return t[rng(#t)] end

local function rand_path(rng, max)
  local n = rng(0, max)
  local parts = {}
  for i = 1, n do parts[i] = pick(rng, SEGS) end
  local p = "/" .. table.concat(parts, "/")
  if n > 0 and rng(4) == 1 then p = p .. "/" end
  if rng(6) == 1 then p = p:sub(1, math.max(1, #p - 1)) end -- prefixes that cut a segment
  if rng(8) == 1 then p = p .. ";p" end -- parameters of the last segment
  return p
end

-- Routes with predicates record their calls in `log` so the spec can compare call sequences.
local function rand_routes(rng, n, log)
  local routes = {}
  for i = 1, n do
    local r = { name = "r" .. i }
    local kind = rng(10)
    if kind <= 3 then r.exact = rand_path(rng, 3)
    elseif kind <= 7 then r.path = rand_path(rng, 2) end
    if rng(3) == 1 then
      r.host = {}
      for k = 1, rng(2) do r.host[k] = pick(rng, HOST_PATS) end
    end
    if rng(3) == 1 then
      r.method = {}
      for k = 1, rng(2) do r.method[k] = pick(rng, METHODS) end
    end
    if rng(8) == 1 then r.headers = { ["x-k"] = rng(2) == 1 and "1" or "~^%d+$" } end
    if rng(10) == 1 then r.pattern = pick(rng, PATTERNS) end
    if rng(10) == 1 then
      local want = rng(2) == 1
      r.match = function(req) log[#log + 1] = i .. ":" .. req.path; return want end
    end
    routes[i] = r
  end
  return routes
end

local function rand_req(rng)
  local hv = rng(3)
  local headers = { ["x-k"] = hv == 1 and "1" or hv == 2 and "12" or nil }
  local req = {
    method = pick(rng, METHODS), path = rand_path(rng, 4), host = pick(rng, HOSTS):lower(),
    header = function(self, name) return headers[name] end,
  }
  return req
end

local function copy(req)
  local c = {}
  for k, v in pairs(req) do c[k] = v end
  return c
end

describe("moonring.router", function()
  it("picks the same route as the naive scan on random tables (first match wins)", function()
    local seed = tonumber(os.getenv("ROUTER_SEED") or "") or os.time()
    math.randomseed(seed)
    local rng = math.random
    local checked, hits = 0, 0
    for _ = 1, 300 do
      local log_c, log_n = {}, {}
      local n = rng(1, 40)
      -- the same table twice, differing only in which log the match functions write to
      local state = { rng(1e9) }
      math.randomseed(state[1]); local rc = rand_routes(rng, n, log_c)
      math.randomseed(state[1]); local rn = rand_routes(rng, n, log_n)
      math.randomseed(state[1] + 1)
      local compiled, naive = router.compile(rc), router.naive(rn)
      for _ = 1, 60 do
        local req = rand_req(rng)
        local a, b = copy(req), copy(req)
        local ic, inn = compiled(a), naive(b)
        if ic ~= inn then
          local desc = {}
          for i, r in ipairs(rc) do
            desc[#desc + 1] = string.format("%d exact=%s path=%s host=%s method=%s", i, tostring(r.exact),
              tostring(r.path), r.host and table.concat(r.host, ",") or "-", r.method and table.concat(r.method, ",") or "-")
          end
          error(string.format("seed %d: %s %s host=%q -> compiled %d, naive %d\n%s", seed, req.method, req.path,
            req.host, ic, inn, table.concat(desc, "\n")))
        end
        assert.same(b.params, a.params)
        if ic > 0 then hits = hits + 1 end
        checked = checked + 1
      end
      assert.same(log_n, log_c, "match calls differ (seed " .. seed .. ")")
    end
    assert.equal(300 * 60, checked)
    assert.is_true(hits > checked / 10, "random requests should hit routes often enough to mean something")
  end)

  it("handles wildcard hosts at any depth, exact before prefix only by route order", function()
    local m = router.compile {
      { path = "/api" , host = { "*.example.com" } },
      { exact = "/api/x" },
      { path = "/" },
    }
    assert.equal(1, m { method = "GET", path = "/api/x", host = "a.b.example.com" })
    assert.equal(2, m { method = "GET", path = "/api/x", host = "example.com" })
    assert.equal(3, m { method = "GET", path = "/apx", host = "x.example.com" })
    assert.equal(3, m { method = "GET", path = "/api", host = ".example.com" == "" and "" or "example.org" })
  end)

  it("matches prefixes at segment boundaries only, with or without a trailing slash", function()
    local routes = {
      { path = "/api" },
      { path = "/static/" },
      { path = "/a/b" },
      { path = "/" },
    }
    for _, m in ipairs { router.compile(routes), router.naive(routes) } do
      local function at(path) return m { method = "GET", path = path, host = "" } end
      assert.equal(1, at("/api"))
      assert.equal(1, at("/api/"))
      assert.equal(1, at("/api/x"))
      assert.equal(1, at("/api;v=1"))
      assert.equal(4, at("/apix"))
      assert.equal(4, at("/api.json"))
      assert.equal(2, at("/static"))
      assert.equal(2, at("/static/x.css"))
      assert.equal(4, at("/staticx"))
      assert.equal(3, at("/a/b/c"))
      assert.equal(4, at("/a/bc"))
      assert.equal(4, at("/a"))
    end
    -- without a catch-all, a path that only shares bytes with a prefix matches nothing
    local m = router.compile { { path = "/admin" } }
    assert.equal(0, m { method = "GET", path = "/administrator", host = "" })
    assert.equal(1, m { method = "GET", path = "/admin/users", host = "" })
  end)

  it("matches exact routes ignoring the parameters of the last segment", function()
    local routes = { { exact = "/login" }, { exact = "/a;x" }, { path = "/" } }
    for _, m in ipairs { router.compile(routes), router.naive(routes) } do
      local function at(path) return m { method = "GET", path = path, host = "" } end
      assert.equal(1, at("/login"))
      assert.equal(1, at("/login;jsessionid=1"))
      assert.equal(3, at("/login/"))
      assert.equal(3, at("/login;x/y"))
      assert.equal(2, at("/a;x"))
      assert.equal(3, at("/a;x;y"))
      assert.equal(3, at("/a"))
    end
  end)

  it("returns 0 without a match and fills params from a pattern", function()
    local m = router.compile {
      { pattern = "'/u/' {:id: %d+ :}", method = { "GET" } },
      { exact = "/x", method = { "POST" } },
    }
    local req = { method = "GET", path = "/u/42", host = "" }
    assert.equal(1, m(req))
    assert.same({ id = "42" }, req.params)
    assert.equal(0, m { method = "GET", path = "/x", host = "" })
  end)
end)
