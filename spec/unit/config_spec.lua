local config = require "moonring.config"

local tmpfiles = {}

-- Writes `src` to a fresh temp file and returns its path.
local function write(src)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  tmpfiles[#tmpfiles + 1] = path
  return path
end

local function load_src(src, opts)
  local path = write(src)
  local cfg, err = config.load(path, opts)
  return cfg, err, path
end

-- Loads a config expected to be valid and returns the normalised table.
local function ok(src)
  local cfg, err = load_src(src)
  assert(cfg, err)
  return cfg
end

-- Loads a config expected to fail; returns the error with the temp path
-- replaced by "CFG" so expectations read like the documented messages.
local function bad(src)
  local cfg, err, path = load_src(src)
  assert.is_nil(cfg)
  assert.is_string(err)
  assert.is_nil(err:find("\n"), "error must be one line: " .. err)
  return (err:gsub(path:gsub("%p", "%%%0"), "CFG"))
end

local MIN = [[
  listen = { "127.0.0.1:8080" },
  upstreams = { origin = { servers = { "127.0.0.1:9000" } } },
  routes = { { upstream = "origin" } },
]]

-- A minimal valid config with `extra` spliced into the returned table.
local function with(extra)
  return "return {\n" .. MIN .. (extra or "") .. "\n}\n"
end

teardown(function()
  for _, p in ipairs(tmpfiles) do os.remove(p) end
end)

describe("moonring.config", function()
  describe("defaults", function()
    it("fills top-level defaults", function()
      local cfg = ok(with())
      assert.equal(0, cfg.workers)
      assert.equal(false, cfg.pid)
      assert.equal("stderr", cfg.error_log)
      assert.equal("info", cfg.log_level)
      assert.equal(false, cfg.access_log)
      assert.equal("combined", cfg.access_log_format)
      assert.equal("auto", cfg.loop)
      assert.equal(10000, cfg.shutdown_timeout_ms)
      assert.same({}, cfg.shared)
      assert.is_nil(cfg.admin)
      assert.is_nil(cfg.router)
    end)

    it("gives run-time upstreams the defaults of a named one", function()
      local cfg = ok(with())
      assert.same({ balance = "round_robin", keepalive = 32, keepalive_timeout_ms = 60000,
        keepalive_requests = 1000, connect_timeout_ms = 5000, read_timeout_ms = 60000, send_timeout_ms = 60000,
        tries = 3, protocol = "http1" }, cfg.upstream_defaults)
    end)

    it("fills limits and proxy defaults", function()
      local cfg = ok(with())
      assert.same({
        max_request_line = 8192, max_header_size = 32768, max_headers = 100,
        client_max_body_size = 1048576, header_timeout_ms = 60000, body_timeout_ms = 60000,
        keepalive_timeout_ms = 75000, send_timeout_ms = 60000, max_connections = 10000,
        keepalive_requests = 1000, max_connections_per_ip = 0,
      }, cfg.limits)
      assert.same({ x_forwarded_for = true, x_forwarded_proto = true, via = true, buffer_size = 65536,
                    server_header = "moonring" },
        cfg.proxy)
    end)

    it("fills upstream defaults", function()
      local u = ok(with()).upstreams[1]
      assert.same({
        name = "origin", balance = "round_robin", keepalive = 32, keepalive_requests = 1000,
        keepalive_timeout_ms = 60000, connect_timeout_ms = 5000, read_timeout_ms = 60000,
        send_timeout_ms = 60000, tries = 3, protocol = "http1",
        servers = { { addr = "127.0.0.1:9000", host = "127.0.0.1", port = 9000, weight = 1 } },
      }, u)
    end)

    it("records file, dir and lua_path relative to the config", function()
      local cfg, _, path = load_src(with('lua_path = "/opt/lib/?.lua;vendor/?.lua"'))
      local dir = path:match("^(.*)/")
      assert.equal(path, cfg.file)
      assert.equal(dir, cfg.dir)
      assert.equal(dir .. "/?.lua;" .. dir .. "/?/init.lua;/opt/lib/?.lua;" .. dir .. "/vendor/?.lua;", cfg.lua_path)
    end)

    it("makes dir absolute for a bare file name (the working directory's)", function()
      local cfg = assert(config.normalise({
        listen = { "1.2.3.4:80" }, routes = { { handler = print } },
      }, "moonring.lua"))
      local pwd = io.popen("pwd -P"):read("*l")
      assert.equal(pwd, cfg.dir)
      assert.equal(pwd .. "/?.lua;" .. pwd .. "/?/init.lua;", cfg.lua_path)
    end)
  end)

  describe("durations", function()
    local function ms(v)
      return ok(with("shutdown_timeout = " .. v)).shutdown_timeout_ms
    end

    it("parses numbers as seconds, flooring to whole ms", function()
      assert.equal(2000, ms("2"))
      assert.equal(1500, ms("1.5"))
      assert.equal(1005, ms("1.005"))
      assert.equal(0, ms("0.0004"))
    end)

    it("parses unit strings", function()
      assert.equal(500, ms('"500ms"'))
      assert.equal(10000, ms('"10s"'))
      assert.equal(120000, ms('"2m"'))
      assert.equal(3600000, ms('"1h"'))
      assert.equal(1500, ms('"1.5s"'))
    end)

    it("rejects bad durations", function()
      for _, v in ipairs({ '"10"', '"10 s"', '"10d"', "-1", "0/0", "math.huge", "true" }) do
        local err = bad(with("shutdown_timeout = " .. v))
        assert.matches("shutdown_timeout: expected duration", err, 1, true)
      end
    end)

    it("rejects zero I/O timeouts", function()
      assert.equal('CFG:5: upstreams.origin.connect_timeout: expected duration of at least 1ms, got 0',
        bad([[return {
  listen = { "127.0.0.1:8080" },
  routes = { { upstream = "origin" } },
  upstreams = { origin = { servers = { "127.0.0.1:9000" },
    connect_timeout = 0 } },
}]]))
    end)
  end)

  describe("sizes", function()
    local function bytes(v)
      return ok(with("limits = { client_max_body_size = " .. v .. " }")).limits.client_max_body_size
    end

    it("parses numbers, plain digits and k/m/g suffixes", function()
      assert.equal(0, bytes("0"))
      assert.equal(100, bytes("100"))
      assert.equal(512, bytes('"512"'))
      assert.equal(16384, bytes('"16k"'))
      assert.equal(16384, bytes('"16K"'))
      assert.equal(1048576, bytes('"1m"'))
      assert.equal(2 * 1024 ^ 3, bytes('"2G"'))
    end)

    it("rejects bad sizes", function()
      for _, v in ipairs({ "-1", "1.5", '"1.5m"', '"16kb"', '"k"', "0/0" }) do
        local err = bad(with("limits = { client_max_body_size = " .. v .. " }"))
        assert.matches("limits.client_max_body_size: expected size", err, 1, true)
      end
    end)

    it("rejects a negative or fractional limits.max_connections_per_ip, naming the key and line", function()
      for _, v in ipairs({ "-1", "2.5", '"10"' }) do
        local err = bad(with("limits = { max_connections_per_ip = " .. v .. " }"))
        assert.matches("^CFG:%d+: limits%.max_connections_per_ip: ", err)
      end
      assert.equal(0, ok(with("limits = { max_connections_per_ip = 0 }")).limits.max_connections_per_ip)
    end)

    it("normalises shared zones into a sorted list", function()
      local cfg = ok(with('shared = { sessions = "10m", cache = 4096 }'))
      assert.same({ { name = "cache", size = 4096 }, { name = "sessions", size = 10485760 } }, cfg.shared)
    end)
  end)

  describe("listen", function()
    it("normalises string and table entries", function()
      local cfg = ok([[return {
        listen = { "*:80", { addr = "[::1]:8443", backlog = 128, name = "v6" },
                   "localhost:8080" },
        routes = { { handler = function() end } },
      }]])
      local h2 = { max_concurrent_streams = 128, initial_window = 65535, connection_window = 1048576,
                   max_frame_size = 16384, max_header_list_size = 32768 }
      assert.same({ addr = "0.0.0.0:80", host = "0.0.0.0", port = 80, backlog = 511, name = "0.0.0.0:80", http2 = h2 },
        cfg.listen[1])
      assert.same({ addr = "[::1]:8443", host = "::1", port = 8443, backlog = 128, name = "v6", http2 = h2 },
        cfg.listen[2])
      assert.equal("localhost", cfg.listen[3].host)
    end)

    it("takes HTTP/2 settings per listener, or turns HTTP/2 off", function()
      local pem = write("not really a certificate\n")
      local cfg = ok(([[return {
        listen = { { addr = "127.0.0.1:1", http2 = false },
                   { addr = "127.0.0.1:2", http2 = { max_concurrent_streams = 10, initial_window = "1m" } },
                   { addr = "127.0.0.1:3", http2 = false, tls = { cert = %q, key = %q } } },
        routes = { { handler = function() end } },
      }]]):format(pem, pem))
      assert.is_false(cfg.listen[1].http2)
      assert.equal(10, cfg.listen[2].http2.max_concurrent_streams)
      assert.equal(1048576, cfg.listen[2].http2.initial_window)
      assert.equal(16384, cfg.listen[2].http2.max_frame_size)
      assert.same({ "http/1.1" }, cfg.listen[3].tls.alpn)
      assert.matches("listen[1].http2.max_frame_size: expected size of at least 16384 bytes",
        bad(with('listen = { { addr = "127.0.0.1:1", http2 = { max_frame_size = 100 } } },')), 1, true)
      assert.matches('listen[1].tls.alpn: "h2" offered on a listener with http2 = false',
        bad(with(([[listen = { { addr = "127.0.0.1:1", http2 = false, tls = { cert = %q, key = %q, alpn = { "h2" } } } },]])
          :format(pem, pem))), 1, true)
    end)

    it("rejects a missing or empty listen", function()
      assert.equal("CFG: listen: required but not set",
        bad('return { routes = { { handler = print } } }'))
      assert.equal("CFG:1: listen: must not be empty",
        bad('return { listen = {}, routes = { { handler = print } } }'))
    end)

    it("rejects bad addresses and ports", function()
      assert.equal('CFG:1: listen[1]: expected "host:port", got "8080"',
        bad('return { listen = { "8080" }, routes = { { handler = print } } }'))
      assert.equal('CFG:1: listen[1]: port must be 1-65535, got "*:70000"',
        bad('return { listen = { "*:70000" }, routes = { { handler = print } } }'))
      assert.equal('CFG:1: listen[1]: expected "host:port", got "::1:80"',
        bad('return { listen = { "::1:80" }, routes = { { handler = print } } }'))
      assert.equal('CFG:1: listen[1]: expected "host:port", got "300.1.1.1:80"',
        bad('return { listen = { "300.1.1.1:80" }, routes = { { handler = print } } }'))
    end)

    it("rejects duplicate addresses after normalising the host", function()
      assert.equal('CFG:4: listen[2]: duplicate address "0.0.0.0:80" (also listen[1])', bad([[return {
  listen = {
    "0.0.0.0:80",
    "*:80",
  },
  routes = { { handler = print } },
}]]))
    end)

    it("rejects an admin address already used by a listener", function()
      assert.equal('CFG:6: admin.listen: address "127.0.0.1:8080" already used by listen[1]',
        bad(with('admin = {\n listen = "127.0.0.1:8080" }')))
    end)
  end)

  describe("upstreams", function()
    it("sorts upstreams by name and builds upstream_index", function()
      local cfg = ok([[return {
        listen = { "127.0.0.1:8080" },
        upstreams = {
          zeta = { servers = { { addr = "10.0.0.1:80", weight = 7 } }, balance = "least_conn",
                   keepalive = 0, tries = 1, read_timeout = "2m", tls = { verify = false } },
          alpha = { servers = { "a.internal:81", "b.internal:82" } },
        },
        routes = { { upstream = "zeta" }, { upstream = "alpha" } },
      }]])
      assert.same({ "alpha", "zeta" }, { cfg.upstreams[1].name, cfg.upstreams[2].name })
      assert.same({ alpha = 1, zeta = 2 }, cfg.upstream_index)
      local z = cfg.upstreams[2]
      assert.equal("10.0.0.1:80", z.servers[1].addr)
      assert.equal(7, z.servers[1].weight)
      assert.is_true(z.servers[1].tls)
      assert.equal("10.0.0.1", z.servers[1].sni)
      assert.equal("least_conn", z.balance)
      assert.equal(0, z.keepalive)
      assert.equal(120000, z.read_timeout_ms)
      assert.is_false(z.tls.verify)
      assert.equal("upstreams.zeta.tls", z.tls.where)
      assert.same({ { addr = "a.internal:81", host = "a.internal", port = 81, weight = 1 },
                    { addr = "b.internal:82", host = "b.internal", port = 82, weight = 1 } }, cfg.upstreams[1].servers)
      assert.equal(2, cfg.routes[1].upstream_id)
      assert.equal(1, cfg.routes[2].upstream_id)
    end)

    it("names upstreams.origin.servers[2] for a bad server address", function()
      assert.equal('CFG:7: upstreams.origin.servers[2]: expected "host:port", got "nonsense"', bad([[return {
  listen = { "127.0.0.1:8080" },
  routes = { { upstream = "origin" } },
  upstreams = {
    origin = { servers = {
      "10.0.0.1:80",
      "nonsense",
    } },
  },
}]]))
    end)

    it("rejects a wildcard host as a server", function()
      assert.matches('upstreams.origin.servers[1]: expected "host:port", got "*:80"',
        bad(with('upstreams = { origin = { servers = { "*:80" } } }')), 1, true)
    end)

    it("rejects bad names, weights and missing servers", function()
      assert.matches([[upstreams: invalid name "my api" (letters, digits, '_', '.', '-')]],
        bad(with('upstreams = { origin = { servers = { "h:1" } }, ["my api"] = { servers = { "h:1" } } }')),
        1, true)
      assert.matches("upstreams.origin.servers[1].weight: expected integer 1..1000, got 0",
        bad(with('upstreams = { origin = { servers = { { addr = "h:1", weight = 0 } } } }')), 1, true)
      assert.matches("upstreams.origin.servers: required but not set",
        bad(with('upstreams = { origin = { balance = "least_conn" } }')), 1, true)
      assert.matches("upstreams.origin.tries: expected integer >= 1, got 2.5",
        bad(with('upstreams = { origin = { servers = { "h:1" }, tries = 2.5 } }')), 1, true)
    end)
  end)

  describe("routes", function()
    it("normalises route fields", function()
      local cfg = ok([[return {
        listen = { "127.0.0.1:8080" },
        upstreams = { origin = { servers = { "127.0.0.1:9000" } } },
        routes = {
          { name = "api", path = "/api/", host = "API.Example.com", method = "get",
            upstream = "origin", strip_prefix = true, set_host = "backend",
            client_max_body_size = "10m", filters = { "moonring.filters.request_id",
              { "moonring.filters.cors", { origins = "*" } }, { on_log = print } } },
          { exact = "/health", host = { "*.example.com", "example.com" }, method = { "get", "head" },
            handler = function() end },
          { headers = { ["X-Debug"] = "1" }, upstream = "10.1.1.1:8000" },
          { pattern = "'/u/' %d+ !.", handler = function() end },
        },
      }]])
      local r1, r2, r3, r4 = unpack(cfg.routes)
      assert.equal("api", r1.name)
      assert.same({ "api.example.com" }, r1.host)
      assert.same({ "GET" }, r1.method)
      assert.equal(1, r1.upstream_id)
      assert.equal("upstream", r1.kind)
      assert.equal(10485760, r1.client_max_body_size)
      assert.same({ "moonring.filters.request_id", { "moonring.filters.cors", { origins = "*" } },
        { on_log = print } }, r1.filters)
      -- filters are resolved at load: module names required, factories called
      assert.equal(3, #r1.chain)
      assert.equal("moonring.filters.request_id", r1.chain[1].module)
      assert.is_function(r1.chain[1].filter.on_request)
      assert.equal("moonring.filters.cors", r1.chain[2].module)
      assert.is_function(r1.chain[2].filter.on_response)
      assert.is_nil(r1.chain[3].module)
      assert.equal(print, r1.chain[3].filter.on_log)
      assert.is_true(r1.simple)
      assert.is_true(r1.strip_prefix)

      assert.equal("routes[2]", r2.name)
      assert.equal(2, r2.index)
      assert.equal("handler", r2.kind)
      assert.same({ "GET", "HEAD" }, r2.method)
      assert.same({ "*.example.com", "example.com" }, r2.host)
      assert.is_false(r2.strip_prefix)
      assert.is_true(r2.simple)

      assert.is_nil(r3.upstream_id)
      assert.same({ addr = "10.1.1.1:8000", host = "10.1.1.1", port = 8000 }, r3.upstream_addr)
      -- a literal address gets an upstream's settings, defaults filled in here (C restates none)
      assert.same({ balance = "round_robin", keepalive = 32, keepalive_timeout_ms = 60000,
        keepalive_requests = 1000, connect_timeout_ms = 5000, read_timeout_ms = 60000, send_timeout_ms = 60000,
        tries = 3, protocol = "http1", servers = { { addr = "10.1.1.1:8000", host = "10.1.1.1", port = 8000, weight = 1 } } },
        r3.adhoc)
      assert.same({ ["x-debug"] = "1" }, r3.headers)
      assert.is_false(r3.simple)
      assert.is_false(r4.simple)
    end)

    it("requires exactly one of upstream and handler", function()
      assert.equal("CFG:4: routes[2]: needs 'upstream' or 'handler'", bad([[return {
  listen = { "127.0.0.1:8080" },
  routes = { { handler = print },
    { path = "/x" },
  },
}]]))
      assert.equal("CFG:3: routes[1]: has both 'upstream' and 'handler' (set exactly one)", bad([[return {
  listen = { "127.0.0.1:8080" },
  routes = { { upstream = "127.0.0.1:1", handler = print } },
}]]))
    end)

    it("rejects an unknown upstream with a suggestion", function()
      assert.equal("CFG:6: routes[1].upstream: unknown upstream 'orgin' (did you mean 'origin'?)", bad([[return {
  listen = { "127.0.0.1:8080" },
  upstreams = { origin = { servers = { "127.0.0.1:9000" } } },
  routes = {
    { path = "/",
      upstream = "orgin" },
  },
}]]))
    end)

    it("validates route keys", function()
      assert.matches('routes[1].path: expected string starting with "/", got "api"',
        bad(with('routes = { { path = "api", handler = print } }')), 1, true)
      assert.matches("routes[1].method[2]: expected HTTP method name, got 5",
        bad(with('routes = { { method = { "GET", 5 }, handler = print } }')), 1, true)
      assert.matches("routes[1].pattern: bad pattern \"[a\"",
        bad(with('routes = { { pattern = "[a", handler = print } }')), 1, true)
      assert.matches("routes[1]: 'path' and 'exact' are mutually exclusive",
        bad(with('routes = { { path = "/a", exact = "/a", handler = print } }')), 1, true)
      assert.matches("routes[1].strip_prefix: requires 'path'",
        bad(with('routes = { { strip_prefix = true, handler = print } }')), 1, true)
    end)

    it("refuses route paths that normalised requests could never match, naming the normal form", function()
      assert.matches('routes[1].path: not a normalised path (requests are normalised before routing, so it would never match): write "/a/b" instead of "/a//b"',
        bad(with('routes = { { path = "/a//b", handler = print } }')), 1, true)
      assert.matches('write "/admin" instead of "/%61dmin"',
        bad(with('routes = { { exact = "/%61dmin", handler = print } }')), 1, true)
      assert.matches('write "/x%2Fy" instead of "/x%2fy"',
        bad(with('routes = { { path = "/x%2fy", handler = print } }')), 1, true)
      assert.matches('write "/y" instead of "/x/../y"', bad(with('routes = { { path = "/x/../y", handler = print } }')), 1, true)
      assert.matches("'..' climbs above the root", bad(with('routes = { { path = "/..", handler = print } }')), 1, true)
      assert.matches("invalid %-encoding", bad(with('routes = { { path = "/%zz", handler = print } }')), 1, true)
      ok(with('routes = { { path = "/", handler = print }, { path = "/a/", handler = print }, { exact = "/a%2Fb", handler = print } }'))
    end)

    it("allows an empty or missing routes list only with a router", function()
      local cfg = ok('return { listen = { "127.0.0.1:1" }, router = function() end }')
      assert.same({}, cfg.routes)
      assert.is_function(cfg.router)
      assert.equal("CFG:1: routes: must not be empty unless 'router' is set",
        bad('return { listen = { "127.0.0.1:1" }, routes = {} }'))
      assert.equal("CFG: routes: required unless 'router' is set",
        bad('return { listen = { "127.0.0.1:1" } }'))
    end)
  end)

  describe("errors", function()
    it("passes syntax errors through with their line", function()
      assert.equal("CFG:3: '}' expected (to close '{' at line 1) near 'x'", bad([[return {
  listen = { "127.0.0.1:8080" }
  x = 1,
}]]))
    end)

    it("reports runtime errors with file and line", function()
      assert.equal("CFG:2: attempt to call global 'nope' (a nil value)", bad([[
local x = 1
nope()
return {}]]))
      assert.equal("CFG: boom", bad('error("boom", 0)'))
    end)

    it("reports a non-table return", function()
      assert.equal("CFG: config must return a table, got nil", bad("local x = 1"))
      assert.equal("CFG: config must return a table, got string", bad('return "x"'))
    end)

    it("reports a missing file", function()
      local cfg, err = config.load("/nonexistent/moonring.lua")
      assert.is_nil(cfg)
      assert.matches("/nonexistent/moonring.lua", err, 1, true)
    end)

    it("rejects an unknown top-level key with a suggestion", function()
      assert.equal("CFG:3: unknown key 'listn' (did you mean 'listen'?)", bad([[return {
  routes = { { handler = print } },
  listn = { "127.0.0.1:8080" },
}]]))
    end)

    it("rejects an unknown key without a close match plainly", function()
      assert.equal("CFG:5: unknown key 'frobnicate'", bad(with("frobnicate = true")))
    end)

    it("rejects an unknown nested key with its path", function()
      assert.equal("CFG:7: upstreams.origin: unknown key 'balanse' (did you mean 'balance'?)", bad([[return {
  listen = { "127.0.0.1:8080" },
  routes = { { upstream = "origin" } },
  upstreams = {
    origin = {
      servers = { "127.0.0.1:9000" },
      balanse = "least_conn",
    },
  },
}]]))
    end)

    it("rejects wrong types naming the key path and expected type", function()
      assert.matches("workers: expected integer >= 1 or \"auto\", got \"4\"",
        bad(with('workers = "4"')), 1, true)
      assert.matches('log_level: expected one of "debug", "info", "notice", "warn", "error", got "verbose"',
        bad(with('log_level = "verbose"')), 1, true)
      assert.matches("proxy.via: expected boolean, got 1", bad(with("proxy = { via = 1 }")), 1, true)
      assert.matches([[routes[1].handler: expected function, got "f"]],
        bad(with('routes = { { handler = "f" } }')), 1, true)
      assert.matches("limits: expected table, got true", bad(with("limits = true")), 1, true)
      assert.matches("listen: unexpected key 'addr' in list of addresses",
        bad('return { listen = { addr = "1.2.3.4:5" }, routes = { { handler = print } } }'), 1, true)
    end)

    it("finds the right line in a multi-line config", function()
      local src = [[
-- moonring test config
local function backend(port)
  return "127.0.0.1:" .. port
end

return {
  listen = { "0.0.0.0:8080" },

  upstreams = {
    api = {
      servers = { backend(9001), backend(9002) },
      read_timeout = "30s",
    },
    static = {
      servers = { backend(9003) },
      read_timeout = "forever",
    },
  },

  routes = {
    { path = "/api", upstream = "api" },
    {
      path = "/static",
      upstream = "static",
      handler = function(req)
        local path = req.path
      end,
    },
  },
}
]]
      assert.equal('CFG:16: upstreams.static.read_timeout: expected ' ..
        'duration (seconds, or a string like "500ms", "10s", "2m", "1h"), got "forever"', bad(src))
      src = src:gsub('"forever"', '"5s"')
      assert.equal("CFG:22: routes[2]: has both 'upstream' and 'handler' (set exactly one)", bad(src))
      src = src:gsub('      handler = function%(req%)\n        local path = req.path\n      end,\n', '')
      src = src:gsub('path = "/static"', 'path = "static"')
      assert.equal('CFG:23: routes[2].path: expected string starting with "/", got "static"', bad(src))
    end)

    it("follows variables to find lines", function()
      assert.equal('CFG:3: upstreams.origin.servers[2]: expected "host:port", got "bad"', bad([[
local servers = {
  "127.0.0.1:1",
  "bad",
}
return {
  listen = { "127.0.0.1:8080" },
  upstreams = { origin = { servers = servers } },
  routes = { { upstream = "origin" } },
}]]))
    end)

    it("omits the line when the key cannot be found in the source", function()
      assert.equal("CFG: unknown key 'bogus'", bad([[
local t = { listen = { "127.0.0.1:1" }, routes = { { handler = print } } }
t["bo" .. "gus"] = 1
return t]]))
    end)

    it("normalise() validates an evaluated table", function()
      local cfg, err = config.normalise({ listen = { "1.2.3.4:80" }, routes = { { handler = print } },
        limits = { max_headers = -1 } }, "mem.lua")
      assert.is_nil(cfg)
      assert.equal("mem.lua: limits.max_headers: expected integer >= 1, got -1", err)
    end)
  end)

  describe("environment", function()
    it("exposes opts.env and _G to the chunk without leaking globals", function()
      local cfg = assert(load_src([[
        leaked_global = 1
        return { listen = { host .. ":8080" }, routes = { { handler = print } },
                 log_level = type(string.format) == "function" and "warn" or "debug" }]],
        { env = { host = "10.0.0.1" } }))
      assert.equal("10.0.0.1:8080", cfg.listen[1].addr)
      assert.equal("warn", cfg.log_level)
      assert.is_nil(rawget(_G, "leaked_global"))
    end)

    it("can require modules next to the config file", function()
      local path = write('return { listen = { "127.0.0.1:1" }, routes = { { handler = print } } }')
      local dir, base = path:match("^(.*)/([^/]+)$")
      local modname = "mr_cfg_helper_" .. base:gsub("%W", "")
      local mod = dir .. "/" .. modname .. ".lua"
      local f = assert(io.open(mod, "w"))
      f:write('return { port = 4242 }')
      f:close()
      tmpfiles[#tmpfiles + 1] = mod
      local saved = package.path
      local cfg = assert(load_src(('return { listen = { "127.0.0.1:" .. require(%q).port }, ' ..
        'routes = { { handler = print } } }'):format(modname)))
      assert.equal(4242, cfg.listen[1].port)
      assert.equal(saved, package.path)
    end)
  end)

  describe("tls", function()
    -- Only readability is checked here; contents are the engine's (spec/unit/tls_spec.lua) and
    -- the server's (spec/integration/tls_spec.lua) business.
    local pem = write("not really a certificate\n")

    it("normalises a listener's tls with defaults", function()
      local cfg = ok(([[return {
        listen = { { addr = "127.0.0.1:8443", tls = { cert = %q, key = %q } } },
        routes = { { handler = function() end } },
      }]]):format(pem, pem))
      local t = cfg.listen[1].tls
      assert.same({ { cert = pem, key = pem } }, t.certs)
      assert.equal("TLSv1.2", t.min_protocol)
      assert.equal("TLSv1.3", t.max_protocol)
      assert.same({ "h2", "http/1.1" }, t.alpn) -- HTTP/2 is on by default
      assert.equal("none", t.client_verify)
      assert.equal(0, t.session_cache)
      assert.is_true(t.session_tickets)
      assert.equal(12 * 3600 * 1000, t.ticket_rotation_ms)
      assert.equal("listen[1].tls", t.where)
    end)

    it("names the key, the file and the line of an unreadable file", function()
      local err = bad([[return {
        listen = { { addr = "127.0.0.1:8443",
                     tls = { certs = { { cert = "/nonexistent/c.pem",
                                         key = "/nonexistent/k.pem" } } } } },
        routes = { { handler = function() end } },
      }]])
      assert.equal("CFG:3: listen[1].tls.certs[1].cert: /nonexistent/c.pem: cannot read (No such file or directory)", err)
    end)

    it("requires certificates, and client_ca with client_verify", function()
      assert.equal("CFG:2: listen[1].tls.certs: required (or 'cert' and 'key')", bad([[return {
        listen = { { addr = "127.0.0.1:8443", tls = { protocols = "TLSv1.3" } } },
        routes = { { handler = function() end } },
      }]]))
      assert.equal("CFG:2: listen[1].tls.client_ca: required when client_verify is \"require\"", bad(([[return {
        listen = { { addr = "127.0.0.1:8443", tls = { cert = %q, key = %q, client_verify = "require" } } },
        routes = { { handler = function() end } },
      }]]):format(pem, pem)))
      assert.equal('CFG:2: listen[1].tls.protocols[1]: expected one of "TLSv1.2", "TLSv1.3", got "TLSv1.0"', bad(([[return {
        listen = { { addr = "127.0.0.1:8443", tls = { cert = %q, key = %q, protocols = { "TLSv1.0" } } } },
        routes = { { handler = function() end } },
      }]]):format(pem, pem)))
    end)

    it("turns https:// servers into a TLS upstream and refuses mixing schemes", function()
      local cfg = ok([[return {
        listen = { "127.0.0.1:8080" },
        upstreams = { api = { servers = { "https://api.internal:443" } } },
        routes = { { upstream = "api" } },
      }]])
      local u = cfg.upstreams[1]
      assert.is_true(u.tls.verify)
      assert.equal("api.internal:443", u.servers[1].addr)
      assert.equal("api.internal", u.servers[1].sni)
      assert.equal("CFG:3: upstreams.api.servers[2]: mixes http:// and https:// servers (use one upstream for each)", bad([[return {
        listen = { "127.0.0.1:8080" },
        upstreams = { api = { servers = { "https://a.internal:443", "http://b.internal:80" } } },
        routes = { { upstream = "api" } },
      }]]))
      assert.equal("CFG:3: upstreams.api.tls.key: required with 'cert'", bad(([[return {
        listen = { "127.0.0.1:8080" },
        upstreams = { api = { servers = { "a.internal:443" }, tls = { cert = %q } } },
        routes = { { upstream = "api" } },
      }]]):format(pem)))
    end)

    it("takes an upstream's protocol, and keeps HTTP/2 TLS connections apart from HTTP/1.1 ones", function()
      local cfg = ok([[return {
        listen = { "127.0.0.1:8080" },
        upstreams = { a = { servers = { "https://api.internal:443" }, protocol = "http2" },
                      b = { servers = { "https://api.internal:443" } },
                      g = { servers = { "10.0.0.1:50051" }, protocol = "grpc" } },
        routes = { { upstream = "a" } },
      }]])
      local a, b, g = cfg.upstreams[1], cfg.upstreams[2], cfg.upstreams[3]
      assert.equal("http2", a.protocol)
      assert.equal("http1", b.protocol)
      assert.equal("grpc", g.protocol)
      assert.are_not.equal(a.servers[1].tls_key, b.servers[1].tls_key)
      assert.equal('CFG:2: upstreams.a.protocol: expected one of "http1", "http2", "grpc", got "h3"', bad([[return {
        upstreams = { a = { servers = { "127.0.0.1:1" }, protocol = "h3" } },
        listen = { "127.0.0.1:8080" }, routes = { { upstream = "a" } },
      }]]))
    end)

    it("finds the line of a key path for errors found in C", function()
      local path = write([[return {
  listen = {
    "127.0.0.1:80",
    { addr = "127.0.0.1:443",
      tls = { certs = { { cert = "a", key = "b" },
                        { cert = "c",
                          key = "d" } } } },
  },
}]])
      assert.equal(7, config.line_of(path, "listen[2].tls.certs[2].key"))
      assert.equal(5, config.line_of(path, "listen[2].tls"))
    end)
  end)
end)
