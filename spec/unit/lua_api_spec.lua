-- The runtime's req/res objects over the real FFI API, outside the server: a request head parsed
-- by the real codec (src/lua/lua_test_api.h) in the core shared library. Covers the checks on
-- the hot paths this file's neighbours only reach through the server, and the time budget's
-- API check.
local ffi = require "ffi"

local helpers = require "helpers"
local lib, lib_path = helpers.core_lib_or_rerun("lua request API")
if not lib then return end
-- the runtime reaches the core through ffi.C, as in the server: make the library global
local global_lib = ffi.load(lib_path, true)
pcall(ffi.cdef, [[
void *mr_lua_test_client_new(const char *head, size_t n);
int mr_lua_test_client_reset(void *c);
void mr_lua_test_client_unrespond(void *c);
void mr_lua_test_client_respond_as_upstream(void *c);
void mr_lua_test_client_free(void *c);
void *malloc(size_t n);
]])
local C = global_lib

local rt = require "moonring.runtime"

local HEAD = "GET /a/b?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nX-One: 1\r\nX-Two: a\r\nX-Two: b\r\n\r\n"

describe("lua request API over FFI", function()
  local c, req, res

  before_each(function()
    c = C.mr_lua_test_client_new(HEAD, #HEAD)
    assert.is_true(c ~= nil)
    local st = rt._state(c)
    req, res = st.req, st.res
  end)

  after_each(function()
    rt.finish(c)
    C.mr_lua_test_client_free(c)
  end)

  it("reads the request", function()
    assert.equal("GET", req.method)
    assert.equal("/a/b", req.path)
    assert.equal("x=1", req.query)
    assert.equal("example.com", req.host)
    assert.equal("1", req:header("x-one"))
    assert.equal("1", req:header("X-ONE"))
    assert.is_nil(req:header("x-none"))
    assert.equal("a, b", req:headers()["x-two"])
  end)

  it("sets, adds and deletes request headers, and refuses CR, LF and NUL", function()
    assert.is_true(req:set_header("X-One", "2"))
    assert.equal("2", req:header("x-one"))
    assert.is_true(req:add_header("X-New", 5))
    assert.equal("5", req:header("x-new"))
    assert.is_true(req:del_header("x-two"))
    assert.is_nil(req:header("x-two"))
    for _, bad in ipairs { "a\rb", "a\nb", "a\0b" } do
      assert.has_error(function() req:set_header("X-Bad", bad) end, "req:set_header: header value contains CR, LF or NUL")
    end
    assert.has_error(function() req:set_header("", "x") end, "req:set_header: header name must be a non-empty string")
  end)

  it("responds, refuses bad response headers, and refuses a second response", function()
    for _, h in ipairs { { ["a b"] = "1" }, { ["a:b"] = "1" }, { ["x"] = "a\r\nb" }, { ["x\0"] = "1" } } do
      assert.has_error(function() req:respond(200, "x", h) end)
    end
    assert.is_true(req:respond(201, "made", { ["content-type"] = "text/plain", ["x-n"] = 7 }))
    assert.equal(201, res.status)
    assert.equal("text/plain", res:header("Content-Type"))
    assert.equal("7", res:header("x-n"))
    local ok, err = req:respond(200, "again")
    assert.is_nil(ok)
    assert.equal("a response was already sent", err)
  end)

  it("edits a response", function()
    C.mr_lua_test_client_respond_as_upstream(c)
    assert.is_true(res:set_header("X-Served-By", "moonring"))
    assert.equal("moonring", res:header("x-served-by"))
    res.status = 203
    assert.equal(203, res.status)
  end)

  it("raises at the next API call once the run is over its time budget", function()
    -- malloc'd and never freed: the runtime keeps the pointer for the rest of this process
    local budget = ffi.cast("int32_t *", ffi.C.malloc(8))
    budget[0], budget[1] = -1, 7
    local cfg = os.tmpname()
    local f = assert(io.open(cfg, "w"))
    f:write('return { listen = { "127.0.0.1:1" }, routes = { { handler = function() end } } }')
    f:close()
    rt.init(cfg, nil, budget, 250)
    os.remove(cfg)
    assert.equal("1", req:header("x-one"))
    budget[0] = 7 -- what the watchdog writes for run 7
    assert.has_error(function() req:header("x-one") end,
      "time budget exceeded: this phase ran 250 ms without yielding (lua.time_budget)")
    assert.has_error(function() return req.path end)
    budget[1] = 8 -- the next run is within budget again
    assert.equal("1", req:header("x-one"))
  end)
end)
