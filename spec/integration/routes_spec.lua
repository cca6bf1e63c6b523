-- Large plain route tables: up to 1,000 routes are matched by the C scan, beyond that by the
-- compiled Lua matcher (lua/moonring/router.lua). Both must pick the same route for the same
-- request: first match wins, exact and prefix paths, exact and wildcard hosts, methods.
local helpers = require "helpers"

local function config(port, n)
  return ([[
local routes = {}
for i = 1, %d do
  local k = i %% 5
  local r
  if k == 0 then r = { exact = "/svc" .. i .. "/item" }
  elseif k == 1 then r = { path = "/p" .. i .. "/" }
  elseif k == 2 then r = { path = "/", host = { "h" .. i .. ".example.com" } }
  elseif k == 3 then r = { path = "/m" .. i .. "/", method = { "POST", "PUT" } }
  else r = { exact = "/x", host = { "*.w" .. i .. ".example.com" } } end
  r.name = "r" .. i
  r.handler = function() return 200, "r" .. i .. "\n" end
  routes[i] = r
end
-- shadowed on purpose: an earlier route with the same prefix must win
routes[#routes + 1] = { name = "late", path = "/p1/", handler = function() return 200, "late\n" end }
return { workers = 1, listen = { "127.0.0.1:%d" }, routes = routes }
]]):format(n, port)
end

-- { method, path, host, expected body or status }
local CASES = {
  { "GET", "/p1/a", "api.example.com", "r1\n" },
  { "GET", "/svc5/item", "api.example.com", "r5\n" },
  { "GET", "/svc5/item/more", "api.example.com", 404 },
  { "GET", "/anything", "h2.example.com", "r2\n" },
  { "GET", "/anything", "H7.Example.com:8080", "r7\n" },
  { "GET", "/m3/upload", "api.example.com", 404 },
  { "POST", "/m3/upload", "api.example.com", "r3\n" },
  { "GET", "/x", "a.b.w4.example.com", "r4\n" },
  { "GET", "/x", "w4.example.com", 404 },
  { "GET", "/p996/deep/path", "api.example.com", "r996\n" },
  { "PUT", "/m998/", "api.example.com", "r998\n" },
  { "GET", "/x", "z.w999.example.com", "r999\n" },
  { "GET", "/nothing/here", "unknown.example.org", 404 },
}

describe("large route tables", function()
  local scan_base, lua_base, scan_mr, lua_mr

  setup(function()
    local p1, p2 = helpers.free_port(), helpers.free_port()
    scan_mr = helpers.start_moonring(config(p1, 999), { wait_port = p1 })      -- 1,000 routes: C scan
    lua_mr = helpers.start_moonring(config(p2, 1200), { wait_port = p2 })      -- 1,201: compiled Lua
    scan_base, lua_base = "http://127.0.0.1:" .. p1, "http://127.0.0.1:" .. p2
  end)

  teardown(function() helpers.stop_all() end)

  local function ask(base, c)
    local res = assert(helpers.http(c[1], base .. c[2], { headers = { Host = c[3] } }))
    return res.status == 200 and res.body or res.status
  end

  it("picks the first matching route with the C scan (1,000 routes)", function()
    for _, c in ipairs(CASES) do
      assert.same(c[4], ask(scan_base, c), c[1] .. " " .. c[2] .. " Host: " .. c[3])
    end
  end)

  it("picks the same routes with the compiled matcher (1,201 routes)", function()
    for _, c in ipairs(CASES) do
      assert.same(c[4], ask(lua_base, c), c[1] .. " " .. c[2] .. " Host: " .. c[3])
    end
    local res = assert(helpers.http("GET", lua_base .. "/x", { headers = { Host = "q.w1199.example.com" } }))
    assert.equal("r1199\n", res.body)
  end)
end)
