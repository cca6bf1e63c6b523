-- moonring.testing.server: integration tests for users' configs and filters against a real
-- moonring (Kong's helpers.start_kong + mock upstream + assert.res_status are the model).
--
--   local server = require "moonring.testing.server"
--   local up = server.mock_upstream{ status = 200, body = "hello", headers = { ["X-Up"] = "1" } }
--   local mr = server.start([[
--     return { listen = { "127.0.0.1:${port}" },
--              upstreams = { up = { servers = { "127.0.0.1:${up}" } } },
--              routes = { { path = "/", upstream = "up", filters = { "myco.api_key" } } } }
--   ]], { vars = { up = up.port } })
--   local res = server.request("GET", mr.url("/x?y=1"), { headers = { ["X-Api-Key"] = "k" } })
--   assert.equal("hello", server.res_status(res, 200))   -- or assert.res_status(200, res)
--   assert.equal("/x", up:requests()[1].path)
--   server.stop_all()                                     -- in teardown: stops and cleans up
--
-- Needs luasocket (Debian's lua-socket) in the test process, and the moonring binary:
-- opts.bin, else $MOONRING_BIN, else `moonring` on the PATH. Every file it writes (configs,
-- logs) is in a temporary directory that stop_all removes (keep it with MOONRING_KEEP_TMP=1).
local socket = require "socket"

local M = {}
local instances, dirs = {}, {}

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1; printf '\\n%d' $?", "r")
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.*)\n(%d+)$")
  return body or out, tonumber(rc)
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- A new empty directory, removed by stop_all.
function M.tmpdir()
  local out, rc = run("mktemp -d -t moonring-test.XXXXXX")
  assert(rc == 0, "mktemp failed: " .. out)
  local d = out:gsub("%s+$", "")
  dirs[#dirs + 1] = d
  return d
end

-- A TCP port nothing listens on now (127.0.0.1).
function M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function port_open(port)
  local c = socket.tcp()
  c:settimeout(0.2)
  local ok = c:connect("127.0.0.1", port)
  c:close()
  return ok ~= nil
end

local function alive(pid) return (read_file("/proc/" .. pid .. "/status") or ""):match("State:%s*[^Z]") ~= nil end

-- Serialises a data-only config table as Lua source.
local function serialise(v, indent)
  indent = indent or ""
  local t = type(v)
  if t == "string" then return ("%q"):format(v) end
  if t == "number" or t == "boolean" then return tostring(v) end
  if t ~= "table" then error("moonring.testing.server: a config table can only hold data; pass Lua source for functions", 3) end
  local parts, keys = {}, {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local key = type(k) == "number" and ("[" .. k .. "]") or ("[" .. ("%q"):format(k) .. "]")
    parts[#parts + 1] = indent .. "  " .. key .. " = " .. serialise(v[k], indent .. "  ")
  end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

-- Starts moonring. `conf` is Lua source (returning the config table; "${port}" and
-- "${name}" for each opts.vars entry are replaced) or a data-only table (listen defaults to a
-- free port). opts: port, vars, bin, timeout (10 s), env (a table). Returns an instance:
-- { port, dir, conf_path, log_path, url(path), log(), stop(), reload() }.
function M.start(conf, opts)
  opts = opts or {}
  local bin = opts.bin or os.getenv("MOONRING_BIN") or "moonring"
  local dir = M.tmpdir()
  local port = opts.port or M.free_port()
  local src
  if type(conf) == "table" then
    local c = {}
    for k, v in pairs(conf) do c[k] = v end
    c.listen = c.listen or { "127.0.0.1:" .. port }
    c.pid = c.pid or (dir .. "/moonring.pid")
    src = "return " .. serialise(c)
  elseif type(conf) == "string" then
    src = conf
  else
    error("moonring.testing.server.start(conf): Lua source or a table", 2)
  end
  local vars = { port = port }
  for k, v in pairs(opts.vars or {}) do vars[k] = v end
  src = src:gsub("%${([%w_]+)}", function(k) return vars[k] ~= nil and tostring(vars[k]) or nil end)
  local conf_path, log_path = dir .. "/moonring.lua", dir .. "/moonring.log"
  local f = assert(io.open(conf_path, "wb"))
  f:write(src)
  f:close()
  local env = ""
  for k, v in pairs(opts.env or {}) do env = env .. k .. "=" .. shq(v) .. " " end
  local out = run("(" .. env .. "exec " .. shq(bin) .. " -c " .. shq(conf_path) .. " >" .. shq(log_path)
    .. " 2>&1 </dev/null & echo $!)")
  local pid = tonumber(out:match("(%d+)"))
  assert(pid, "could not start " .. bin .. ": " .. out)
  local inst = { pid = pid, port = port, dir = dir, conf_path = conf_path, log_path = log_path }
  function inst.url(path) return "http://127.0.0.1:" .. port .. (path or "/") end
  function inst.log() return read_file(log_path) or "" end
  function inst.stop(_, timeout)
    if not alive(pid) then return end
    run("kill -TERM " .. pid)
    local deadline = socket.gettime() + (timeout or 10)
    while alive(pid) and socket.gettime() < deadline do socket.sleep(0.02) end
    if alive(pid) then run("kill -KILL " .. pid) end
  end
  function inst.reload() return run(shq(bin) .. " -s reload -c " .. shq(conf_path)) end
  instances[#instances + 1] = inst
  local deadline = socket.gettime() + (opts.timeout or 10)
  while not port_open(port) do
    if not alive(pid) or socket.gettime() > deadline then
      inst:stop()
      error("moonring did not start listening on " .. port .. ":\n" .. inst.log(), 2)
    end
    socket.sleep(0.02)
  end
  return inst
end

-- A mock upstream: a moonring that answers every request with opts.status (200), opts.body
-- ("") and opts.headers, or with opts.handler (Lua source of a `function(req)` returning
-- status, body, headers), and records each request: up:requests() returns them in order as
-- { method, path, query, headers, body }; up:reset() forgets them.
function M.mock_upstream(opts)
  opts = opts or {}
  local handler = opts.handler or ("function(req) return %d, %q, %s end"):format(opts.status or 200, opts.body or "",
    serialise(opts.headers or {}))
  local inst = M.start([[
local moonring = require "moonring"
local json = require "moonring.json"
local respond = ]] .. handler .. [[

return {
  workers = 1,
  listen = { "127.0.0.1:${port}" },
  shared = { mock = "8m" },
  lua = { max_body = "4m" },
  limits = { client_max_body_size = "4m" },
  routes = {
    { exact = "/__mock/requests", handler = function(req)
        local d, out = moonring.shared.mock, {}
        for i = 1, d:get("n") or 0 do out[i] = json.decode(d:get("r" .. i)) end
        return 200, json.encode(out) or "[]", { ["Content-Type"] = "application/json" }
      end },
    { exact = "/__mock/reset", handler = function() moonring.shared.mock:flush_all(); return 200, "" end },
    { path = "/", handler = function(req)
        local d = moonring.shared.mock
        local n = d:incr("n", 1, 0)
        d:set("r" .. n, json.encode({ method = req.method, path = req.path, query = req.query,
          headers = req:headers(), body = req:body() or "" }))
        return respond(req)
      end },
  },
}
]], opts)
  function inst.requests()
    local res = assert(M.request("GET", inst.url("/__mock/requests")))
    return require("moonring.json").decode(res.body)
  end
  function inst.reset() M.request("GET", inst.url("/__mock/reset")) end
  return inst
end

-- A minimal HTTP/1.1 client: method, url ("http://127.0.0.1:port/path"), opts.headers,
-- opts.body, opts.timeout (5 s). Returns { status, headers (lower-case names, repeats joined
-- with ", "), body } or nil, err.
function M.request(method, url, opts)
  opts = opts or {}
  local host, port, path = url:match("^http://([^:/]+):?(%d*)(.*)$")
  if not host then error("moonring.testing.server.request: bad url " .. tostring(url), 2) end
  port = tonumber(port) or 80
  if path == "" then path = "/" end
  local c = socket.tcp()
  c:settimeout(opts.timeout or 5)
  local ok, err = c:connect(host, port)
  if not ok then return nil, "connect: " .. tostring(err) end
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: " .. host .. ":" .. port, "Connection: close" }
  for k, v in pairs(opts.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if opts.body then lines[#lines + 1] = "Content-Length: " .. #opts.body end
  c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or ""))
  local status_line, e = c:receive("*l")
  if not status_line then c:close(); return nil, "reading the status line: " .. tostring(e) end
  local res = { status = tonumber(status_line:match("^HTTP/%d%.%d (%d+)")), headers = {} }
  while true do
    local l = c:receive("*l")
    if not l or l == "" then break end
    local k, v = l:match("^([^:]+):%s*(.-)%s*$")
    if k then
      k = k:lower()
      res.headers[k] = res.headers[k] and (res.headers[k] .. ", " .. v) or v
    end
  end
  local h = res.headers
  if method == "HEAD" or res.status == 204 or res.status == 304 then
    res.body = ""
  elseif (h["transfer-encoding"] or ""):lower():find("chunked", 1, true) then
    local parts = {}
    while true do
      local size = tonumber((c:receive("*l") or "0"):match("^%x+") or "0", 16)
      if size == 0 then break end
      parts[#parts + 1] = c:receive(size)
      c:receive("*l")
    end
    res.body = table.concat(parts)
  elseif h["content-length"] then
    res.body = c:receive(tonumber(h["content-length"])) or ""
  else
    local data, _, partial = c:receive("*a")
    res.body = data or partial or ""
  end
  c:close()
  return res
end

-- The body of res if its status is `status`; else an error showing the status and the body.
function M.res_status(res, status, level)
  if type(res) ~= "table" then error("expected a response, got " .. tostring(res), (level or 1) + 1) end
  if res.status ~= status then
    error(("expected status %d, got %d; body:\n%s"):format(status, res.status or -1, tostring(res.body):sub(1, 2000)),
      (level or 1) + 1)
  end
  return res.body
end

-- Stops every instance started here and removes the temporary directories.
function M.stop_all()
  for _, inst in ipairs(instances) do inst:stop() end
  instances = {}
  if not os.getenv("MOONRING_KEEP_TMP") then
    for _, d in ipairs(dirs) do run("rm -rf " .. shq(d)) end
  end
  dirs = {}
end

-- assert.res_status(status, res) in busted/luassert, returning the body.
do
  local ok, luassert = pcall(require, "luassert")
  if ok and type(luassert) == "table" and not rawget(luassert, "res_status") then
    rawset(luassert, "res_status", function(status, res) return M.res_status(res, status, 2) end)
  end
end

return M
