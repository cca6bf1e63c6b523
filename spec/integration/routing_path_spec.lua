-- One path into routing (docs/routing.md), end to end: routes, filters and the upstream all see the
-- normalised path and host, so no encoding, dot-segment, slash or parameter trick reaches what an
-- auth filter guards. Every request here is sent raw (curl would normalise some of them itself).
-- The origin answers "ok <port> <METHOD> <path>", so each case also shows the path it received.
local helpers = require "helpers"

local function get(port, target, extra)
  local data = helpers.raw(port, "GET " .. target .. " HTTP/1.1\r\nHost: h.example\r\n" .. (extra or "") ..
    "Connection: close\r\n\r\n", { timeout = 5 })
  local list = helpers.parse_responses(data or "")
  return list[1] or { status = 0, body = data or "", headers = {} }
end

describe("the path into routing", function()
  local origin, mr, port

  setup(function()
    origin = helpers.start_origin()
    port = helpers.free_port()
    mr = helpers.start_moonring(([[
local guard = { on_request = function(req)
  if req:header("x-key") ~= "secret" then return req:respond(401, "denied " .. req.path .. "\n") end
end }
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = { origin = { servers = { "127.0.0.1:%d" } } },
  routes = {
    { name = "admin", path = "/admin", upstream = "origin", filters = { guard } },
    { name = "login", exact = "/login", upstream = "origin", filters = { guard } },
    { name = "api", path = "/api", upstream = "origin", strip_prefix = true },
    { name = "vhost", path = "/", host = { "Site.Example" }, handler = function(req) return 200, "vhost " .. req.host .. "\n" end },
    { name = "rest", path = "/", upstream = "origin" },
  },
}
]]):format(port, origin.port), { wait_port = port })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  it("guards /admin against every spelling that an upstream would read as /admin", function()
    -- Each of these reaches the guard (401), never the origin unauthenticated.
    local spellings = {
      "/admin", "//admin", "///admin", "/./admin", "/x/../admin", "/x/./../admin", "/%61dmin", "/%61%64%6D%69%6E",
      "/admin/", "/admin/.", "/admin/./", "/x/%2e%2e/admin", "/x/%2E%2E/admin", "/x/.%2e/admin", "/x/%2e./admin",
      "//admin//x", "/admin;jsessionid=1", "/admin/x/..", "/admin?x=/../y",
    }
    for _, t in ipairs(spellings) do
      local r = get(port, t)
      assert.equal(401, r.status, t .. " -> " .. r.status .. " " .. tostring(r.body))
      assert.truthy(r.body:find("^denied /admin"), t .. " -> " .. r.body)
    end
    -- With the key, the origin receives the normalised path.
    local r = get(port, "/x/..//%61dmin/./y", "X-Key: secret\r\n")
    assert.equal(200, r.status)
    assert.matches("GET /admin/y\n$", r.body)
  end)

  it("refuses with 400 what cannot be normalised safely, and never forwards it", function()
    local before = tonumber(assert(helpers.http("GET", ("http://127.0.0.1:%d/count"):format(origin.port))).body)
    local refused = {
      "/..", "/../admin", "/%2e%2e/admin", "/x/../../admin", "/admin%2Fx", "/admin%2fx", "/x%2F..%2Fadmin",
      "/admin%5Cx", "/adm%00in", "/adm%0ain", "/admin%", "/admin%4", "/admin%zz", "/%C0%AFadmin",
      "/x/..;/admin", "/x;p/../admin", "/a;b/c",
    }
    for _, t in ipairs(refused) do
      local r = get(port, t)
      assert.equal(400, r.status, t .. " -> " .. r.status .. " " .. tostring(r.body))
    end
    local after = tonumber(assert(helpers.http("GET", ("http://127.0.0.1:%d/count"):format(origin.port))).body)
    assert.equal(before, after, "a refused request reached the origin")
    assert.matches("400", mr.log())
  end)

  it("keeps encodings that are not unreserved characters, once, with uppercase hex", function()
    local r = get(port, "/files/a%2bb/%252e%7e")
    assert.equal(200, r.status)
    assert.matches("GET /files/a%%2Bb/%%252e~\n$", r.body)
  end)

  it("matches an exact route whatever the last segment's parameters say", function()
    assert.equal(401, get(port, "/login").status)
    assert.equal(401, get(port, "/login;jsessionid=abc").status)
    assert.equal(401, get(port, "//login").status)
    assert.equal(200, get(port, "/login/x").status) -- not the exact route: the catch-all
  end)

  it("routes a Host with upper case or a trailing dot like the plain name", function()
    for _, host in ipairs({ "site.example", "SITE.EXAMPLE", "Site.Example.", "site.example.:8080", "site.example:80" }) do
      local data = helpers.raw(port, "GET / HTTP/1.1\r\nHost: " .. host .. "\r\nConnection: close\r\n\r\n")
      local r = helpers.parse_responses(data or "")[1]
      assert.equal(200, r.status, host)
      assert.equal("vhost site.example\n", r.body, host)
    end
    local bad = helpers.raw(port, "GET / HTTP/1.1\r\nHost: a..example\r\nConnection: close\r\n\r\n")
    assert.equal(400, helpers.parse_responses(bad)[1].status)
  end)

  it("matches prefixes at segment boundaries and strips them to a path that starts with /", function()
    -- /api strips to /, /api/x to /x, and the query is kept; /apix is not under /api.
    for _, c in ipairs({ { "/api", "/" }, { "/api/", "/" }, { "/api/x", "/x" }, { "/api?q=1", "/" } }) do
      local r = get(port, c[1])
      assert.equal(200, r.status, c[1])
      assert.equal("ok " .. origin.port .. " GET " .. c[2] .. "\n", r.body, c[1])
    end
    local r = get(port, "/api/head?q=1")
    assert.truthy(r.body:find("GET /head?q=1 HTTP/1.1\r\n", 1, true), r.body)
    r = get(port, "/apix")
    assert.equal(200, r.status)
    assert.equal("ok " .. origin.port .. " GET /apix\n", r.body) -- the catch-all, unstripped
  end)
end)
