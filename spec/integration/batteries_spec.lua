-- The batteries: gzip compression, the response cache, custom error pages, req:args/cookie/
-- set_method/set_body and res:body/rewrite, on the real binary.
local helpers = require "helpers"

local function gunzip(data)
  local path = helpers.tmpname("gz", ".gz")
  helpers.write_file(path, data)
  local out, rc = helpers.run("gzip -dc " .. helpers.shell_quote(path) .. " 2>&1")
  os.remove(path)
  assert(rc == 0, "gzip -dc failed: " .. out)
  return out
end

describe("batteries", function()
  local base, origin

  setup(function()
    origin = helpers.start_origin()
    local port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    local conf = ([[
local moonring = require "moonring"
local SELF, OP = "127.0.0.1:@PORT@", "127.0.0.1:@OP@"
local big = ("<p>hello gzip</p>\n"):rep(200)
return {
  workers = 1,
  listen = { SELF },
  shared = { pages = "4m", counts = "1m" },
  routes = {
    -- what the proxied routes below talk to
    { path = "/gen/html", handler = function(req)
        moonring.shared.counts:incr("html", 1, 0)
        return 200, big, { ["Content-Type"] = "text/html; charset=utf-8", ETag = '"v1"' }
      end },
    { path = "/gen/small", handler = function() return 200, "tiny", { ["Content-Type"] = "text/html" } end },
    { path = "/gen/png", handler = function() return 200, big, { ["Content-Type"] = "image/png" } end },
    { path = "/gen/cached", handler = function(req)
        local n = moonring.shared.counts:incr("cached", 1, 0)
        return 200, "origin " .. n .. " " .. (req:header("accept-language") or "-"), {
          ["Content-Type"] = "text/plain", ["Cache-Control"] = req:arg("cc") or "max-age=60",
          Vary = req:arg("vary"), ["Set-Cookie"] = req:arg("cookie") }
      end },
    { path = "/gen/count", handler = function(req) return 200, tostring(moonring.shared.counts:get(req:arg("k")) or 0) end },
    { path = "/gen/missing", handler = function() return 404, "plain not found" end },

    { path = "/z/", upstream = SELF, strip_prefix = true, filters = { { "moonring.filters.gzip", {} } } },
    { path = "/zany/", upstream = OP, strip_prefix = true, filters = { { "moonring.filters.gzip", { types = { "*" }, flush = true } } } },
    { path = "/c/", upstream = SELF, strip_prefix = true, filters = {
        { "moonring.filters.cache", { dict = "pages", ttl = 30 } } } },
    { path = "/e/", upstream = SELF, strip_prefix = true, filters = {
        { "moonring.filters.error_pages", { pages = { [404] = "<h1>nothing at all (${status})</h1>", ["5xx"] = { body = "down" } } } } } },
    { path = "/down", upstream = "127.0.0.1:1", filters = {
        { "moonring.filters.error_pages", { pages = { ["5xx"] = "<h1>we are down: ${status}</h1>" } } } } },
    { path = "/args", handler = function(req)
        local a = req:args()
        local keys = {}
        for k, v in pairs(a) do keys[#keys + 1] = k .. "=" .. (type(v) == "table" and table.concat(v, "+") or v) end
        table.sort(keys)
        return 200, table.concat(keys, "&") .. "|" .. tostring(req:cookie("sid")) .. "|" .. tostring(req:cookie("q"))
          .. "|" .. tostring(req:cookie("nope"))
      end },
    { path = "/method/", upstream = OP, strip_prefix = true, filters = { { on_request = function(req)
        assert(req:set_method("PURGE"))
        local ok, err = req:set_method("NOPE")
        req:set_header("x-bad-method", tostring(err))
      end } } },
    { path = "/setbody/", upstream = OP, strip_prefix = true, filters = { { on_request = function(req)
        local b = assert(req:body())
        assert(req:set_body(b:upper() .. "!"))
      end } } },
    { path = "/rewrite/", upstream = OP, strip_prefix = true, filters = { {
        on_body = function(res, chunk, eof)
          return res:rewrite(chunk, eof, function(body) return "[" .. #body .. "]" .. body:sub(1, 3) end, 1000)
        end } } },
  },
}
]]):gsub("@(%u+)@", { PORT = port, OP = origin.port })
    helpers.start_moonring(conf, { wait_port = port })
  end)

  teardown(function() helpers.stop_all() end)

  local function get(path, headers, method, body)
    return assert(helpers.http(method or "GET", base .. path, { headers = headers, body = body }))
  end

  describe("gzip", function()
    it("compresses listed types for clients that accept gzip", function()
      local res = get("/z/gen/html", { ["Accept-Encoding"] = "br;q=1, gzip;q=0.8" })
      assert.equal(200, res.status)
      assert.equal("gzip", res.headers["content-encoding"])
      assert.equal("Accept-Encoding", res.headers["vary"])
      assert.equal('W/"v1"', res.headers["etag"])
      assert.is_nil(res.headers["content-length"])
      assert.is_true(#res.body < 200)
      assert.equal(("<p>hello gzip</p>\n"):rep(200), gunzip(res.body))
    end)

    it("leaves alone what it should not compress", function()
      local plain = get("/z/gen/html")
      assert.is_nil(plain.headers["content-encoding"])
      assert.equal("Accept-Encoding", plain.headers["vary"])
      assert.equal(3600, #plain.body)
      assert.is_nil(get("/z/gen/html", { ["Accept-Encoding"] = "gzip;q=0" }).headers["content-encoding"])
      assert.is_nil(get("/z/gen/small", { ["Accept-Encoding"] = "gzip" }).headers["content-encoding"])
      assert.is_nil(get("/z/gen/png", { ["Accept-Encoding"] = "gzip" }).headers["content-encoding"])
      local head = get("/z/gen/html", { ["Accept-Encoding"] = "gzip" }, "HEAD")
      assert.is_nil(head.headers["content-encoding"])
    end)

    it("streams large chunked bodies", function()
      local res = get("/zany/chunked/300000", { ["Accept-Encoding"] = "gzip" })
      assert.equal("gzip", res.headers["content-encoding"])
      assert.equal(helpers.pattern(300000), gunzip(res.body))
    end)
  end)

  describe("cache", function()
    it("answers a second request from the shared dict", function()
      local r1 = get("/c/gen/cached?k=1")
      assert.equal("MISS", r1.headers["x-cache"])
      local r2 = get("/c/gen/cached?k=1")
      assert.equal("HIT", r2.headers["x-cache"])
      assert.equal(r1.body, r2.body)
      assert.equal("text/plain", r2.headers["content-type"])
      assert.is_not_nil(r2.headers["age"])
      assert.equal("1", get("/gen/count?k=cached").body)
    end)

    it("does not store private, no-store or cookie-setting responses", function()
      get("/c/gen/cached?k=2&cc=private")
      assert.equal("MISS", get("/c/gen/cached?k=2&cc=private").headers["x-cache"])
      get("/c/gen/cached?k=3&cookie=a%3D1")
      assert.equal("MISS", get("/c/gen/cached?k=3&cookie=a%3D1").headers["x-cache"])
    end)

    it("keys on the headers Vary names", function()
      local en = get("/c/gen/cached?k=4&vary=Accept-Language", { ["Accept-Language"] = "en" })
      assert.equal("MISS", en.headers["x-cache"])
      local de = get("/c/gen/cached?k=4&vary=Accept-Language", { ["Accept-Language"] = "de" })
      assert.equal("MISS", de.headers["x-cache"])
      local en2 = get("/c/gen/cached?k=4&vary=Accept-Language", { ["Accept-Language"] = "en" })
      assert.equal("HIT", en2.headers["x-cache"])
      assert.matches(" en$", en2.body)
    end)

    it("bypasses on Cache-Control: no-cache", function()
      get("/c/gen/cached?k=5")
      assert.equal("BYPASS", get("/c/gen/cached?k=5", { ["Cache-Control"] = "no-cache" }).headers["x-cache"])
    end)
  end)

  describe("error pages", function()
    it("replaces an upstream error body, by status and by class", function()
      local res = get("/e/gen/missing")
      assert.equal(404, res.status)
      assert.equal("<h1>nothing at all (404)</h1>", res.body)
      assert.equal("text/html; charset=utf-8", res.headers["content-type"])
      assert.equal("plain not found", get("/gen/missing").body)
    end)

    it("replaces the core's own 502 when the upstream is down", function()
      local res = get("/down")
      assert.equal(502, res.status)
      assert.equal("<h1>we are down: 502</h1>", res.body)
    end)
  end)

  describe("request and response helpers", function()
    it("lists query arguments and reads cookies", function()
      assert.equal("a=1+2&b=&c=x y|abc|quoted|nil",
        get("/args?a=1&b&a=2&c=x+y", { Cookie = 'sid=abc; q="quoted"' }).body)
    end)

    it("changes the method and the body sent upstream", function()
      local res = get("/method/head")
      assert.matches("^PURGE /head HTTP/1.1", res.body)
      assert.matches("x%-bad%-method: unknown method NOPE", res.body)
      res = get("/setbody/echo", nil, "POST", "hello")
      assert.equal("HELLO!", res.body)
    end)

    it("rewrites a whole response body with a bound", function()
      assert.equal("[500]abc", get("/rewrite/size/500").body)
      assert.equal(helpers.pattern(5000), get("/rewrite/size/5000").body) -- over the bound: unchanged
    end)
  end)
end)
