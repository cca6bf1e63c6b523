-- gRPC through moonring (upstreams with protocol = "grpc"), end to end with python3-grpcio on both
-- sides (spec/fixtures/grpc_fixture.py: generic handlers, raw bytes): the four call shapes with
-- flow control, trailers, grpc-timeout, and errors turned into gRPC statuses (no server:
-- UNAVAILABLE, a deadline: DEADLINE_EXCEEDED, a Lua filter's UNAUTHENTICATED), answered as
-- Trailers-Only responses (checked frame by frame with spec/fixtures/h2_client.py).
local helpers = require "helpers"

local PY = "/usr/bin/python3 "
local FIXTURE = PY .. helpers.shell_quote(helpers.spec_dir .. "/fixtures/grpc_fixture.py")
local H2C = PY .. helpers.shell_quote(helpers.spec_dir .. "/fixtures/h2_client.py")
local H2SERVER = PY .. helpers.shell_quote(helpers.spec_dir .. "/fixtures/h2_server.py")

local function facts(out)
  local t = { output = out }
  for line in out:gmatch("[^\n]+") do
    local k, v = line:match("^(%S+) ?(.*)$")
    if k then t[k] = t[k] and (t[k] .. "|" .. v) or v end
  end
  return t
end

local function call(port, ...)
  local args = { ... }
  for i, a in ipairs(args) do args[i] = helpers.shell_quote(tostring(a)) end
  return facts(helpers.run(FIXTURE .. " client " .. port .. " " .. table.concat(args, " ") .. " 2>&1"))
end

-- A unary call to any path (the fixture's client knows only test.Echo).
local function call_path(port, path)
  return facts(helpers.run(PY .. "-c " .. helpers.shell_quote(([[
import grpc
ch = grpc.insecure_channel("127.0.0.1:%d")
try:
    ch.unary_unary("%s")(b"x", timeout=10)
    print("code OK")
except grpc.RpcError as e:
    print("code", e.code().name)
    print("details", e.details())
]]):format(port, path)) .. " 2>&1"))
end

local function raw(port, ...)
  local args = { ... }
  for i, a in ipairs(args) do args[i] = helpers.shell_quote(tostring(a)) end
  return facts(helpers.run(H2C .. " grpc_raw " .. port .. " " .. table.concat(args, " ") .. " 2>&1"))
end

describe("gRPC proxying", function()
  local gport, mr, port, dead

  setup(function()
    gport = helpers.free_port()
    local g = helpers.spawn(FIXTURE .. " server " .. gport, helpers.tmpname("grpc", ".log"))
    assert(helpers.eventually(function() return g.log():find("listening", 1, true) end, 10), g.log())
    -- an HTTP/2 server that knows nothing of grpc-timeout: whatever deadline hits is moonring's
    local hport = helpers.free_port()
    local h = helpers.spawn(H2SERVER .. " " .. hport, helpers.tmpname("h2srv", ".log"))
    assert(helpers.eventually(function() return h.log():find("listening", 1, true) end, 10), h.log())
    dead = helpers.free_port()
    port = helpers.free_port()
    mr = helpers.start_moonring(([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  limits = { client_max_body_size = 0 },
  upstreams = {
    grpc = { servers = { "127.0.0.1:%d" }, protocol = "grpc" },
    down = { servers = { "127.0.0.1:%d" }, protocol = "grpc", tries = 1 },
    plain = { servers = { "127.0.0.1:%d" }, protocol = "grpc" },
  },
  routes = {
    { path = "/slow", upstream = "plain" },
    { path = "/down.Svc", upstream = "down" },
    { path = "/auth.Svc/", handler = function(req) return req:grpc_error(3, "unused") end },
    { path = "/test.Echo", upstream = "grpc", filters = { {
        on_request = function(req)
          if req:header("x-token") == "bad" then
            return req:grpc_error("UNAUTHENTICATED", "bad token: ünïcode 100%%")
          end
        end } } },
  },
}
]]):format(port, gport, dead, hport))
  end)

  teardown(function() helpers.stop_all() end)

  it("proxies a unary call, its reply and its trailing metadata", function()
    local f = call(port, "unary", "hello")
    assert.equal("OK", f.code, f.output)
    assert.equal("echo:hello", f.reply, f.output)
    assert.truthy(f.trailer and f.trailer:find("x-trailer=t1", 1, true), f.output)
  end)

  it("streams from the server: 200 messages of 64 KiB, flow-controlled, each exact", function()
    local f = call(port, "server_stream", 200, 65536)
    assert.equal("OK", f.code, f.output)
    assert.equal("200", f.messages, f.output)
    assert.equal("200", f.exact, f.output)
  end)

  it("streams from the client: 300 messages of 32 KiB reach the server exact", function()
    local f = call(port, "client_stream", 300, 32768)
    assert.equal("OK", f.code, f.output)
    assert.equal(f.want, f.reply, f.output)
  end)

  it("streams both ways in lock-step (nothing waits for the end of the call)", function()
    local f = call(port, "bidi", 200, 4096)
    assert.equal("OK", f.code, f.output)
    assert.equal("200", f.echoed, f.output)
  end)

  it("forwards an upstream's error status (a Trailers-Only response) to the client", function()
    local f = call(port, "unary", "x", "md:x-fail-code=5", "md:x-fail-message=no such thing")
    assert.equal("NOT_FOUND", f.code, f.output)
    assert.equal("no such thing", f.details, f.output)
    local r = raw(port, "/test.Echo/Unary", "x-fail-code=5")
    assert.equal("1 200", r.status, r.output)
    assert.equal("1", r.trailers_only, r.output)
    assert.truthy(r.header:find("grpc-status: 5", 1, true), r.output)
  end)

  it("answers UNAVAILABLE when no server can be reached", function()
    local f = call_path(port, "/down.Svc/Call")
    assert.equal("UNAVAILABLE", f.code, f.output)
    local r = raw(port, "/down.Svc/Call")
    assert.equal("1 200", r.status, r.output)
    assert.equal("1", r.trailers_only, r.output)
    assert.truthy(r.header:find("grpc-status: 14", 1, true), r.output)
    assert.truthy(r.header:find("grpc-message: Bad Gateway", 1, true), r.output)
    assert.falsy(r.header:find("content-length", 1, true), r.output)
  end)

  it("honours grpc-timeout: a slow server gets DEADLINE_EXCEEDED from moonring", function()
    -- by hand, so the client's own deadline cannot be what answers
    local r = raw(port, "/slow/3000", "grpc-timeout=300m")
    assert.equal("1", r.trailers_only, r.output)
    assert.truthy(r.header:find("grpc-status: 4", 1, true), r.output)
    assert.truthy(tonumber(r.seconds) < 2, r.output)
    assert.truthy(mr.log():find("deadline passed (grpc-timeout)", 1, true), mr.log())
    local f = call(port, "unary", "x", "md:x-sleep-ms=3000", "timeout:0.5")
    assert.equal("DEADLINE_EXCEEDED", f.code, f.output)
    -- the server and the connection to it go on serving
    assert.equal("echo:after", call(port, "unary", "after").reply)
  end)

  it("lets a Lua filter refuse a call with a gRPC status (req:grpc_error)", function()
    local f = call(port, "unary", "x", "md:x-token=bad")
    assert.equal("UNAUTHENTICATED", f.code, f.output)
    assert.equal("bad token: ünïcode 100%", f.details, f.output)
    local r = raw(port, "/test.Echo/Unary", "x-token=bad")
    assert.equal("1", r.trailers_only, r.output)
    assert.truthy(r.header:find("grpc-status: 16", 1, true), r.output)
    assert.truthy(r.header:find("grpc-message: bad token: %C3%BCn%C3%AFcode 100%25", 1, true), r.output)
    -- and a handler answering every call of a service
    f = call_path(port, "/auth.Svc/Login")
    assert.equal("INVALID_ARGUMENT", f.code, f.output)
  end)

  it("answers UNIMPLEMENTED for a method no route serves", function()
    local f = call_path(port, "/nowhere.Svc/Call")
    assert.equal("UNIMPLEMENTED", f.code, f.output)
  end)
end)
