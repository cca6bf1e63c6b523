-- The OpenResty compatibility layer (lua = { ngx = true }) on the real binary: Debian's
-- lua-resty-lrucache unmodified, and each ngx.* function used the way lua-resty-redis,
-- lua-resty-http and lua-resty-jwt use it (written from their documented usage).
local helpers = require "helpers"
local socket = require "socket"

local function start_resp_server()
  local h = helpers.spawn("luajit " .. helpers.shell_quote(helpers.spec_dir .. "/fixtures/resp_server.lua"),
    helpers.tmpname("resp", ".log"))
  local tport, uport
  assert(helpers.eventually(function()
    tport, uport = h.log():match("listening (%d+) (%d+)")
    return tport ~= nil
  end, 5), "resp server did not start: " .. h.log())
  return tonumber(tport), tonumber(uport)
end

local CONF = [=[
local lrucache = require "resty.lrucache"      -- Debian's, unmodified: reads the global ngx
local pureffi = require "resty.lrucache.pureffi"
local cjson = require "cjson"
local cache = assert(lrucache.new(100))
local pcache = assert(pureffi.new(100))
-- lua-resty-core where it can load: Debian's own base module (the shims shadow it on the path)
local debian_base = assert(loadfile("/usr/share/lua/5.1/resty/core/base.lua"))()
local RP, UP, OP = @RP@, @UP@, @OP@

-- lua-resty-redis's way of talking: an array of strings per command, "*l" for the reply line,
-- receive(n + 2) for a bulk, setkeepalive into the pool
local function redis(cmd, ...)
  local sock = ngx.socket.tcp()
  sock:settimeout(1000)
  local ok, err = sock:connect("127.0.0.1", RP)
  if not ok then return nil, "connect: " .. err end
  local args = { cmd, ... }
  local req = { "*", #args, "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    req[#req + 1] = { "$", #a, "\r\n", a, "\r\n" }    -- nested tables, as lua-resty-redis builds them
  end
  local bytes, err2 = sock:send(req)
  if not bytes then return nil, err2 end
  local line, err3 = sock:receive()
  if not line then return nil, err3 end
  local prefix, rest = line:sub(1, 1), line:sub(2)
  local res
  if prefix == "+" then res = rest
  elseif prefix == ":" then res = tonumber(rest)
  elseif prefix == "$" then
    local n = tonumber(rest)
    if n < 0 then res = ngx.null else res = sock:receive(n + 2):sub(1, n) end
  elseif prefix == "-" then return false, rest end
  local reused = sock:getreusedtimes()
  sock:setkeepalive(10000, 10)
  return res, reused
end

-- lua-resty-http's way of reading a chunked body: receiveuntil + a coroutine.wrap reader
local function http_get(path)
  local sock = ngx.socket.tcp()
  sock:settimeouts(1000, 1000, 1000)
  assert(sock:connect("127.0.0.1", OP))
  assert(sock:send("GET " .. path .. " HTTP/1.1\r\nHost: origin\r\n\r\n"))
  local status_line = assert(sock:receive("*l"))
  local headers = {}
  local read_header = sock:receiveuntil("\r\n")
  while true do
    local l = assert(read_header())
    if l == "" then break end
    local k, v = l:match("^([^:]+):%s*(.*)$")
    headers[k:lower()] = v
  end
  local reader = coroutine.wrap(function()
    if headers["transfer-encoding"] then
      while true do
        local size = tonumber(assert(sock:receive("*l")), 16)
        if size == 0 then sock:receive("*l"); break end
        coroutine.yield(assert(sock:receive(size)))
        sock:receive(2)
      end
    else
      coroutine.yield(assert(sock:receive(tonumber(headers["content-length"]))))
    end
  end)
  local parts = {}
  repeat local c = reader(); parts[#parts + 1] = c until not c
  sock:setkeepalive()
  return status_line:match(" (%d+)"), table.concat(parts)
end

local sema = require("ngx.semaphore").new(0)

return {
  workers = 1,
  listen = { "127.0.0.1:@PORT@" },
  lua = { ngx = true },
  shared = { cache = "1m" },
  init_worker = function()
    ngx.timer.at(0, function(premature)
      ngx.shared.cache:set("timer_phase", ngx.get_phase())
    end)
  end,
  routes = {
    { path = "/lru", handler = function()
        cache:set("k", (cache:get("k") or 0) + 1, 10)
        pcache:set("k", (pcache:get("k") or 0) + 2, 0.05)
        local expired_later = pcache:get("k")
        ngx.say("lru ", cache:get("k"), " ", tostring(cache:get("missing")), " pureffi ", expired_later, " ",
          debian_base.version, " ", type(debian_base.get_string_buf(10)))
      end },
    { path = "/vars", handler = function()
        ngx.say(ngx.var.uri, "|", ngx.var.args, "|", ngx.var.request_uri, "|", ngx.var.request_method, "|",
          ngx.var.host, "|", ngx.var.http_x_thing, "|", ngx.var.arg_a, "|", ngx.var.cookie_sid, "|",
          ngx.var.remote_addr, "|", ngx.var.scheme, "|", ngx.var.server_protocol, "|", ngx.var.is_args, "|",
          tostring(ngx.var.nope))
      end },
    { path = "/req", filters = { { on_request = function()
        local h = ngx.req.get_headers()
        ngx.req.set_header("X-Added", "yes")
        ngx.req.set_header("X_Multi", { "a", "b" })
        ngx.req.clear_header("X-Drop")
        local args = ngx.req.get_uri_args()
        ngx.req.set_uri_args({ b = 2, a = { "x", "y" } })
        ngx.ctx.seen = h["X-Thing"] .. "," .. h.x_thing .. "," .. tostring(args.flag) .. "," .. args.a[2]
          .. "," .. ngx.req.get_method()
      end, on_response = function(res)
        ngx.header["X-Seen"] = ngx.ctx.seen
        ngx.header.x_status = ngx.status
        ngx.header["Set-Cookie"] = { "a=1", "b=2" }
      end } }, upstream = "127.0.0.1:" .. OP, strip_prefix = true },
    { path = "/body", handler = function()
        ngx.req.read_body()
        local data = ngx.req.get_body_data()
        local post = ngx.req.get_post_args()
        ngx.status = 201
        ngx.header["X-Len"] = #data
        ngx.print("post ", post.a, " ", post.b[1], "+", post.b[2])
        ngx.exit(ngx.HTTP_CREATED)
      end },
    { path = "/setbody", filters = { { on_request = function()
        ngx.req.read_body()
        ngx.req.set_body_data("replaced:" .. ngx.req.get_body_data())
        ngx.req.set_method(ngx.HTTP_POST)
      end } }, upstream = "127.0.0.1:" .. OP, strip_prefix = true },
    { path = "/deny", upstream = "127.0.0.1:" .. OP, filters = {
        { on_request = function() if ngx.var.arg_ok then return ngx.exit(ngx.OK) end ngx.exit(ngx.HTTP_FORBIDDEN) end },
        { on_request = function() ngx.header["X-Second"] = "ran"; ngx.say("passed"); ngx.exit(200) end },
      } },
    { path = "/redirect", handler = function() return ngx.redirect("/elsewhere", 301) end },
    { path = "/redis", handler = function()
        local r1 = assert(redis("SET", "k", "v1"))
        local r2 = assert(redis("GET", "k"))
        local r3, reused = redis("INCR", "n")
        local r4 = redis("GET", "missing")
        local r5, e5 = redis("BOGUS")
        ngx.say(r1, " ", r2, " ", r3, " ", tostring(r4 == ngx.null), " ", tostring(r5), " ", e5, " reused=", reused)
      end },
    { path = "/http", handler = function()
        local s1, b1 = http_get("/chunked/30")
        local s2, b2 = http_get("/size/5")
        ngx.say(s1, " ", b1, " ", s2, " ", b2)
      end },
    { path = "/jwt", handler = function()
        -- lua-resty-jwt's HS256: base64url(json) . base64url(hmac), verification by recomputing
        local b64 = require "ngx.base64"
        local header = b64.encode_base64url(cjson.encode({ alg = "HS256", typ = "JWT" }))
        local payload = b64.encode_base64url(cjson.encode({ sub = "42", exp = ngx.time() + 60 }))
        local ffi = require "ffi"
        pcall(ffi.cdef, [[
          typedef struct evp_md_st EVP_MD;
          const EVP_MD *EVP_sha256(void);
          unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len, const unsigned char *d, size_t n,
                              unsigned char *md, unsigned int *md_len);
          unsigned char *ngx_hex_dump(unsigned char *dst, const unsigned char *src, size_t len);
        ]])
        local md, len = ffi.new("unsigned char[32]"), ffi.new("unsigned int[1]")
        local input = header .. "." .. payload
        ffi.C.HMAC(ffi.C.EVP_sha256(), "secret", 6, input, #input, md, len)
        local sig = ffi.string(md, len[0])
        local token = input .. "." .. b64.encode_base64url(sig)
        local hexbuf = ffi.new("unsigned char[64]")
        ffi.C.ngx_hex_dump(hexbuf, md, 32)
        local parts = {}
        for p in token:gmatch("[^.]+") do parts[#parts + 1] = p end
        local claims = cjson.decode(b64.decode_base64url(parts[2]))
        ngx.say(#parts, " ", claims.sub, " ", tostring(b64.decode_base64url(parts[3]) == sig), " ", #ffi.string(hexbuf, 64))
      end },
    { path = "/codec", handler = function()
        ngx.say(ngx.md5("abc"), " ", ngx.encode_base64(ngx.sha1_bin("abc")), " ", ngx.encode_base64(ngx.hmac_sha1("k", "abc")),
          " ", ngx.crc32_long("abc"), " ", ngx.encode_base64("ab"), " ", ngx.encode_base64("ab", true), " ",
          ngx.decode_base64("YWI="), " ", tostring(ngx.decode_base64("!!")), " ", ngx.escape_uri("a b/ä"), " ",
          ngx.unescape_uri("a%20b+c"), " ", ngx.encode_args({ a = 1, b = { "x", "y" }, c = true }), " ",
          ngx.decode_args("a=1&a=2&b").a[2], " ", ngx.quote_sql_str("it's"), " ",
          tostring(ngx.null == cjson.null), " ", ngx.http_time(1700000000), " ",
          ngx.parse_http_time("Tue, 14 Nov 2023 22:13:20 GMT"), " ", ngx.cookie_time(1700000000))
      end },
    { path = "/re", handler = function()
        local m = ngx.re.match("/users/42/posts", [[^/users/(?<id>\d+)/(\w+)$]], "jo")
        local from, to = ngx.re.find("hello 123", [[\d+]], "jo")
        local out = {}
        for mm in ngx.re.gmatch("a=1,b=2", [[(\w)=(\d)]], "jo") do out[#out + 1] = mm[1] .. mm[2] end
        local s1 = ngx.re.sub("hello world", "o", "0", "jo")
        local s2, n2 = ngx.re.gsub("hello world", "o", "0", "jo")
        local parts = require("ngx.re").split("a,b;c", "[,;]", "jo")
        local bad, err = ngx.re.match("x", "(", "jo")
        ngx.say(m.id, " ", m[2], " ", from, "-", to, " ", table.concat(out, ","), " ", s1, " ", s2, n2, " ",
          table.concat(parts, "/"), " ", tostring(bad), " ", err and "err" or "noerr")
      end },
    { path = "/dict", handler = function()
        local d = ngx.shared.cache
        d:set("a", 1, 0, 7)
        local v, flags = d:get("a")
        local ok, err = d:add("a", 2)
        d:delete("n")
        d:incr("n", 5, 10)
        d:expire("a", 0.05)
        ngx.sleep(0.1)
        local stale, _, is_stale = d:get_stale("a")
        ngx.say(v, flags, " ", tostring(ok), err, " ", d:get("n"), " ", tostring(d:get("a")), " ", stale,
          tostring(is_stale), " ", d:capacity() > 0 and "cap" or "nocap", " ", tostring(d:get("timer_phase")))
      end },
    { path = "/threads", handler = function()
        local t1 = ngx.thread.spawn(function() ngx.sleep(0.05); return "one" end)
        local t2 = ngx.thread.spawn(function() return redis("ECHO", "two") end)
        local _, r1 = ngx.thread.wait(t1)
        local _, r2 = ngx.thread.wait(t2)
        ngx.say(r1, " ", r2)
      end },
    { path = "/sema/wait", handler = function()
        local ok, err = sema:wait(2)
        ngx.say("waited ", tostring(ok), " ", tostring(err))
      end },
    { path = "/sema/post", handler = function() sema:post(1); ngx.say("posted") end },
    { path = "/sema/timeout", handler = function()
        local ok, err = sema:wait(0.05)
        ngx.say(tostring(ok), " ", err, " ", sema:count())
      end },
    { path = "/udp", handler = function()
        local u = ngx.socket.udp()
        u:settimeout(1000)
        assert(u:setpeername("127.0.0.1", UP))
        assert(u:send("hello"))
        local data = assert(u:receive())
        assert(u:send({ "a", "b" }))
        local data2 = assert(u:receive())
        u:close()
        local u2 = ngx.socket.udp()
        u2:settimeout(100)
        assert(u2:setpeername("localhost", 9)) -- nothing listens: the kernel answers "port unreachable"
        u2:send("x")
        local none, err = u2:receive()
        ngx.say(data, " ", data2, " ", tostring(none), " ", err)
      end },
    { path = "/early", upstream = "127.0.0.1:" .. OP, strip_prefix = true, filters = { {
        on_request = function() ngx.header["X-Early"] = "set in access"; ngx.header["X-Origin"] = nil end,
      } } },
    { path = "/arg", upstream = "127.0.0.1:" .. OP, strip_prefix = true, filters = { {
        on_body = function() ngx.arg[1] = ngx.arg[1]:upper() end,
      } } },
    { path = "/balancer", upstream = "127.0.0.1:1", strip_prefix = true, filters = { {
        on_request = function() assert(require("ngx.balancer").set_current_peer("127.0.0.1", OP)) end,
      } } },
    { path = "/core", handler = function()
        require "resty.core"
        require "resty.core.shdict"
        local base = require "resty.core.base"
        ngx.say(base.version, " ", tostring(base.get_request() ~= nil), " ", ngx.config.subsystem, " ",
          ngx.config.ngx_lua_version, " ", ngx.worker.id(), " ", ngx.worker.count(), " ", ngx.get_phase(), " ",
          type(ngx.worker.pid()), " ", tostring(ngx.worker.exiting()), " ", require("ngx.process").type())
      end },
    { path = "/log", handler = function()
        ngx.log(ngx.WARN, "ngx log ", 42, " ", nil, " ", true)
        ngx.say("logged")
      end },
  },
}
]=]

describe("ngx compatibility layer", function()
  local mr, base, origin

  setup(function()
    local rp, up = start_resp_server()
    origin = helpers.start_origin()
    local port = helpers.free_port()
    base = "http://127.0.0.1:" .. port
    local conf = CONF:gsub("@(%u+)@", { RP = rp, UP = up, OP = origin.port, PORT = port })
    mr = helpers.start_moonring(conf, { wait_port = port })
  end)

  teardown(function() helpers.stop_all() end)

  local function get(path, opts)
    local res = assert(helpers.http(opts and opts.method or "GET", base .. path, opts))
    return res
  end

  local function body(path, opts)
    local res = get(path, opts)
    assert.equal(200, res.status, res.body)
    return res.body
  end

  it("runs Debian's lua-resty-lrucache unmodified", function()
    assert.equal("lru 1 nil pureffi 2 0.1.25 cdata\n", body("/lru"))
    assert.equal("lru 2 nil pureffi 4 0.1.25 cdata\n", body("/lru"))
    socket.sleep(0.1)
    assert.equal("lru 3 nil pureffi 2 0.1.25 cdata\n", body("/lru")) -- the 50 ms TTL (ngx.now) expired
  end)

  it("has ngx.var", function()
    assert.equal("/vars|a=1&b|/vars?a=1&b|GET|example.com|thing|1|s1|127.0.0.1|http|HTTP/1.1|?|nil\n",
      body("/vars?a=1&b", { headers = { Host = "example.com", ["X-Thing"] = "thing", Cookie = "x=1; sid=s1" } }))
    -- $request_uri is the target as sent; $uri the normalised path
    assert.matches("^/vars/|a=1|//vars/%./%?a=1|", body("//vars/./?a=1"))
  end)

  it("edits the request with ngx.req and the response with ngx.header", function()
    local res = get("/req/head?a=1&a=2&flag", { headers = { ["X-Thing"] = "t", ["X-Drop"] = "d" } })
    assert.equal(200, res.status)
    assert.equal("t,t,true,2,GET", res.headers["x-seen"])
    assert.equal("200", res.headers["x-status"])
    assert.equal("a=1, b=2", res.headers["set-cookie"])
    local head = res.body:lower()
    assert.matches("x-added: yes", head, 1, true)
    assert.matches("x-multi: a", head, 1, true)
    assert.matches("x-multi: b", head, 1, true)
    assert.not_matches("x-drop", head, 1, true)
    assert.matches("^get /head%?a=x&a=y&b=2 ", head)
  end)

  it("reads the body, answers with ngx.print/status/exit", function()
    local res = get("/body", { method = "POST", body = "a=1&b=x&b=y" })
    assert.equal(201, res.status)
    assert.equal("post 1 x+y", res.body)
    assert.equal("11", res.headers["x-len"])
  end)

  it("replaces the body and the method", function()
    local res = get("/setbody/echo", { method = "PUT", body = "orig" })
    assert.equal(200, res.status)
    assert.equal("replaced:orig", res.body)
  end)

  it("ends a phase with ngx.exit, and redirects", function()
    local res = get("/deny")
    assert.equal(403, res.status)
    assert.matches("403 Forbidden", res.body, 1, true)
    res = get("/deny?ok=1")
    assert.equal(200, res.status)
    assert.equal("passed\n", res.body)
    assert.equal("ran", res.headers["x-second"])
    res = get("/redirect")
    assert.equal(301, res.status)
    assert.equal("/elsewhere", res.headers["location"])
  end)

  it("talks to a Redis server the way lua-resty-redis does", function()
    assert.equal("OK v1 1 true false ERR unknown command 'BOGUS' reused=2\n", body("/redis"))
  end)

  it("reads an HTTP response the way lua-resty-http does", function()
    assert.equal("200 " .. helpers.pattern(30) .. " 200 abcde\n", body("/http"))
  end)

  it("builds and checks an HS256 token the way lua-resty-jwt does", function()
    assert.equal("3 42 true 64\n", body("/jwt"))
  end)

  it("encodes, hashes and escapes", function()
    assert.equal("900150983cd24fb0d6963f7d28e17f72 qZk+NkcGgWq6PiVxeFDCbJzQ2J0= " ..
      "+b7wkf4A2fUShZODbbqZ4ZPwgXQ= 891568578 YWI= YWI ab nil a%20b%2F%C3%A4 a b c a=1&b=x&b=y&c 2 'it\\'s' " ..
      "true Tue, 14 Nov 2023 22:13:20 GMT 1700000000 Tue, 14-Nov-23 22:13:20 GMT\n", body("/codec"))
  end)

  it("has ngx.re with the jo flags", function()
    assert.equal("42 posts 7-9 a1,b2 hell0 world hell0 w0rld2 a/b/c nil err\n", body("/re"))
  end)

  it("has ngx.shared, ngx.sleep and timers", function()
    helpers.eventually(function() return body("/dict"):find("timer\n", 1, true) ~= nil end)
    assert.equal("17 falseexists 15 nil 1true cap timer\n", (body("/dict"):gsub("^(%d+) (%a+)", "%1 %2")))
  end)

  it("runs ngx.thread and ngx.semaphore", function()
    assert.equal("one two\n", body("/threads"))
    assert.equal("nil timeout 0\n", body("/sema/timeout"))
    local c = assert(helpers.connect(tonumber(base:match(":(%d+)$"))))
    c:send("GET /sema/wait HTTP/1.1\r\nHost: x\r\n\r\n")
    socket.sleep(0.1)
    assert.equal("posted\n", body("/sema/post"))
    local data = helpers.read(c, { pattern = "waited" })
    c:close()
    assert.matches("waited true nil", data, 1, true)
  end)

  it("has UDP cosockets", function()
    assert.equal("echo:hello echo:ab nil connection refused\n", body("/udp"))
  end)

  it("applies response headers set in the access phase to the proxied response", function()
    local res = get("/early/size/3")
    assert.equal(200, res.status)
    assert.equal("set in access", res.headers["x-early"])
    assert.is_nil(res.headers["x-origin"])
    assert.equal("abc", res.body)
  end)

  it("runs body filters on ngx.arg", function()
    assert.equal("ABCDEFGHIJ", body("/arg/size/10"))
  end)

  it("maps ngx.balancer.set_current_peer to the request's upstream", function()
    assert.equal("abc", body("/balancer/size/3"))
  end)

  it("loads resty.core shims and answers ngx.config and ngx.worker", function()
    assert.equal("0.1.25 true http 10023 0 1 content number false worker\n", body("/core"))
  end)

  it("logs with ngx.log", function()
    body("/log")
    assert(helpers.eventually(function() return mr.log():find("ngx log 42 nil true", 1, true) end))
  end)

  it("refuses a config that uses ngx without lua.ngx", function()
    local ok, out = helpers.moonring_check([[
local lrucache = require "resty.lrucache"
return { listen = { "127.0.0.1:1" }, routes = { { path = "/", handler = function() return 200 end } } }
]])
    assert.is_false(ok)
    assert.matches("set lua = { ngx = true }", out, 1, true)
  end)
end)
