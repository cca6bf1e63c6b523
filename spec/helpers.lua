-- Spec helpers: start/stop mr-origin and moonring, and talk HTTP/1.1 to them.
--
--   local helpers = require "helpers"
--   local origin = helpers.start_origin()
--   local mr = helpers.start_moonring(conf_source, { wait_port = port })
--   local res = assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/x"))
--   helpers.stop_all()   -- in teardown
--
-- Environment: MOONRING_BIN (default <repo>/build/moonring),
--              MR_ORIGIN_BIN (default <repo>/build/mr-origin).
local socket = require "socket"

local helpers = {}

-- ------------------------------------------------------------------ paths

local function script_dir()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  if src:sub(1, 1) ~= "/" then
    local pwd = os.getenv("PWD")
    if not pwd then
      local p = io.popen("pwd")
      pwd = p:read("*l")
      p:close()
    end
    src = pwd .. "/" .. src
  end
  return (src:match("^(.*)/[^/]*$") or ".")
end

helpers.spec_dir = script_dir()
helpers.root = helpers.spec_dir:match("^(.*)/[^/]*$") or helpers.spec_dir
helpers.moonring_bin = os.getenv("MOONRING_BIN") or (helpers.root .. "/build/moonring")
helpers.origin_bin = os.getenv("MR_ORIGIN_BIN") or (helpers.root .. "/build/mr-origin")


local function shq(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helpers.shell_quote = shq

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end
helpers.read_file = read_file

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end
helpers.write_file = write_file

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local my_pid = (read_file("/proc/self/stat") or ""):match("^(%d+)") or "0"

-- Every file this module makes (configs, logs, PKIs) goes under a directory of its own in
-- <repo>/tmp/, removed when the module goes away (at the latest when busted exits), unless
-- MOONRING_KEEP_TMP is set: failures print the logs they need, so nothing piles up in tmp/.
helpers.tmp = ("%s/tmp/run-%s-%d"):format(helpers.root, my_pid, math.floor(socket.gettime() * 1e6))
os.execute("mkdir -p '" .. helpers.tmp .. "'")
local seq = 0
-- A fresh path under <repo>/tmp/ (nothing is created). busted insulates spec files, so this
-- module (and seq) starts afresh in each file of one run: the microsecond clock keeps names of two
-- files in the same second apart (a reused origin log once handed start_origin a stale port).
function helpers.tmpname(prefix, ext)
  seq = seq + 1
  return ("%s/%s-%s-%d-%d%s"):format(helpers.tmp, prefix or "f", my_pid, math.floor(socket.gettime() * 1e6), seq,
    ext or "")
end

function helpers.sleep(seconds)
  socket.sleep(seconds)
end

-- Runs a shell command; returns stdout and the exit code.
local function run(cmd)
  local p = io.popen(cmd .. "\nprintf '\\n__MR_RC=%d' $?", "r")
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.*)\n__MR_RC=(%d+)$")
  return body or out, tonumber(rc)
end
helpers.run = run

-- -------------------------------------------------------------- processes

local ok_ffi, ffi = pcall(require, "ffi")
if ok_ffi then
  pcall(ffi.cdef, "int kill(int pid, int sig);")
  pcall(ffi.cdef, "int fcntl(int fd, int cmd, ...);")
end

-- Keep test sockets out of spawned processes (curl, wrk, moonring...).
local function cloexec(sock)
  if ok_ffi and sock.getfd then pcall(ffi.C.fcntl, sock:getfd(), 2 --[[F_SETFD]], ffi.new("int", 1)) end
  return sock
end
local SIGNALS = { HUP = 1, INT = 2, QUIT = 3, KILL = 9, USR1 = 10, USR2 = 12, TERM = 15, CONT = 18, STOP = 19 }

local function kill(pid, sig)
  sig = sig or "TERM"
  local num = type(sig) == "number" and sig or SIGNALS[tostring(sig):upper():gsub("^SIG", "")]
  if not num then error("unknown signal " .. tostring(sig)) end
  if ok_ffi then
    return ffi.C.kill(tonumber(pid), num) == 0
  end
  return select(2, run("kill -s " .. num .. " " .. tonumber(pid) .. " 2>/dev/null")) == 0
end
helpers.kill = kill

local procs = {}   -- every process started by the helpers

-- Starts `cmd` (a shell command string) in the background with its
-- stdout+stderr going to log_path. A wrapper subshell reaps it and records
-- its exit code; a watchdog kills it if this Lua process dies.
-- Returns a handle: { pid, log_path, alive(), wait(timeout) -> rc, signal(sig), stop(sig, timeout) -> rc }
function helpers.spawn(cmd, log_path)
  log_path = log_path or helpers.tmpname("spawn", ".log")
  local pid_path = log_path .. ".pid"
  local rc_path = log_path .. ".rc"
  os.remove(pid_path)
  os.remove(rc_path)
  local script = table.concat({
    "( " .. cmd .. " >" .. shq(log_path) .. " 2>&1 </dev/null & p=$!;",
    "  echo $p >" .. shq(pid_path .. ".tmp") .. "; mv " .. shq(pid_path .. ".tmp") .. " " .. shq(pid_path) .. ";",
    "  ( while kill -0 $p 2>/dev/null; do",
    "      kill -0 " .. my_pid .. " 2>/dev/null || { kill -9 $p 2>/dev/null; break; }; sleep 0.5;",
    "    done ) >/dev/null 2>&1 &",
    "  wait $p; echo $? >" .. shq(rc_path .. ".tmp") .. "; mv " .. shq(rc_path .. ".tmp") .. " " .. shq(rc_path),
    ") >/dev/null 2>&1 &",
  }, "\n")
  local _, rc = run(script)
  if rc ~= 0 then error("spawn failed: " .. cmd) end
  local pid
  for _ = 1, 500 do
    pid = tonumber(read_file(pid_path) or "")
    if pid then break end
    socket.sleep(0.01)
  end
  if not pid then error("spawn: no pid for: " .. cmd) end

  local h = { pid = pid, log_path = log_path, cmd = cmd }
  function h.exit_code()
    local s = read_file(rc_path)
    return s and tonumber(s:match("%d+")) or nil
  end
  function h.alive() return h.exit_code() == nil end
  function h.log() return read_file(log_path) or "" end
  function h.signal(sig)
    if sig == "TERM" or sig == "QUIT" or sig == "INT" or sig == "KILL" then h.stopped = true end
    if h.alive() then return kill(pid, sig) end
    return false
  end
  -- Waits up to timeout seconds (default 10) for the exit; returns the exit
  -- code (128+N when killed by signal N) or nil if still running.
  function h.wait(timeout)
    local deadline = socket.gettime() + (timeout or 10)
    repeat
      local code = h.exit_code()
      if code then return code end
      socket.sleep(0.02)
    until socket.gettime() > deadline
    return h.exit_code()
  end
  -- Sends sig (default TERM), waits up to timeout (default 10 s), then KILLs.
  function h.stop(sig, timeout)
    h.stopped = true
    if h.alive() then kill(pid, sig or "TERM") end
    local code = h.wait(timeout or 10)
    if code == nil then
      kill(pid, "KILL")
      h.wait(2)
    end
    return code
  end
  procs[#procs + 1] = h
  return h
end

-- A sanitizer report in a moonring log is a test failure even when every request succeeded.
local function sanitizer_report(h)
  if not h.is_moonring then return nil end
  local log = h.log() or ""
  local s = log:find("ERROR: AddressSanitizer", 1, true) or log:find("ERROR: LeakSanitizer", 1, true)
    or log:find("runtime error:", 1, true)
  if s then return log:sub(math.max(1, s - 200), s + 3000) end
  return nil
end

-- The core built as a shared library, for unit specs that drive C through LuaJIT FFI. An
-- ASan-instrumented core (scripts/test --sanitize) can only be dlopen'ed by a process that started
-- with the ASan runtime, so then the calling spec file is registered to run again in a child
-- busted preloading it (only there: a preload inherited by curl or the origin would hang them),
-- and nil is returned: the caller returns at once. `name` is the calling file's describe label.
function helpers.core_lib_or_rerun(name)
  local lib_path = os.getenv("MOONRING_FFI_LIB") or (helpers.root .. "/build/libmoonring_ffi.so")
  local spec_path = debug.getinfo(2, "S").source:gsub("^@", "")
  if spec_path:sub(1, 1) ~= "/" then spec_path = (os.getenv("PWD") or ".") .. "/" .. spec_path end
  local sanitized = (read_file(lib_path) or ""):find("libasan.so", 1, true)
  if not sanitized or (read_file("/proc/self/maps") or ""):find("libasan", 1, true) then
    return require("ffi").load(lib_path), lib_path
  end
  -- busted's describe/it/assert live in the spec file's environment, not in this module's.
  local env = getfenv(2)
  local describe, it, assert = env.describe, env.it, env.assert
  describe(name .. " (sanitizer build)", function()
    it("passes in a child process preloading the ASan runtime", function()
      local out = run("ldd " .. shq(lib_path))
      local asan = out:match("libasan%.so[%.%d]* => (%S+)")
      assert.is_string(asan, "libasan not found by ldd " .. lib_path)
      -- from the root, where busted finds its settings (.busted)
      local res = run(("cd %s && LD_PRELOAD=%s ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:exitcode=86 "
        .. "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 MOONRING_FFI_LIB=%s "
        .. "busted -o plainTerminal %s 2>&1"):format(shq(helpers.root), shq(asan), shq(lib_path), shq(spec_path)))
      assert.matches("[1-9]%d* successes / 0 failures / 0 errors", res, 1, false, res)
      assert.not_matches("Sanitizer", res, 1, false, res)
    end)
  end)
  return nil
end

-- Stops every process the helpers started (TERM, then KILL after 5 s); raises if a moonring
-- instance logged a sanitizer report.
function helpers.stop_all()
  local died = {}
  for _, h in ipairs(procs) do
    if h.is_moonring and not h.stopped and not h.alive() and h.exit_code() ~= 0 then
      -- it exited on its own: a crash, unless a test stopped it through a signal of its own
      died[#died + 1] = ("moonring (pid %d) died with exit code %s; log %s:\n%s")
        :format(h.pid, tostring(h.exit_code()), h.log_path, (h.log() or ""):sub(-3000))
    end
    if h.alive() then kill(h.pid, "TERM") end
  end
  for _, h in ipairs(procs) do
    if h.alive() then h.stop("TERM", 5) end
  end
  local reports = {}
  for _, h in ipairs(procs) do
    local r = sanitizer_report(h)
    if r then reports[#reports + 1] = r end
  end
  procs = {}
  if #died > 0 then error(table.concat(died, "\n----\n"), 2) end
  if #reports > 0 then error("sanitizer report:\n" .. table.concat(reports, "\n----\n"), 2) end
end

-- Last resort on a normal interpreter exit: stop what is left, remove this module's files.
if newproxy then
  helpers._sentinel = newproxy(true)
  getmetatable(helpers._sentinel).__gc = function()
    pcall(helpers.stop_all)
    if not os.getenv("MOONRING_KEEP_TMP") and helpers.tmp:find("/tmp/run%-") then
      os.execute("rm -rf " .. shq(helpers.tmp))
    end
  end
end

-- Waits for a spawned process while sampling an instance's RSS; returns its exit code and the
-- highest RSS seen (KiB).
function helpers.watch_rss(h, instance)
  local max_rss = 0
  while h.alive() do
    max_rss = math.max(max_rss, instance.rss_kb())
    socket.sleep(0.05)
  end
  max_rss = math.max(max_rss, instance.rss_kb())
  return h.wait(1), max_rss
end

-- VmRSS in KiB of pid plus all its descendants (worker processes).
function helpers.rss_kb(pid)
  local total, seen = 0, {}
  local function visit(p)
    if seen[p] then return end
    seen[p] = true
    local st = read_file("/proc/" .. p .. "/status")
    if not st then return end
    total = total + (tonumber(st:match("VmRSS:%s*(%d+)")) or 0)
    local tasks = io.popen("ls /proc/" .. p .. "/task 2>/dev/null")
    for tid in tasks:lines() do
      local ch = read_file("/proc/" .. p .. "/task/" .. tid .. "/children") or ""
      for c in ch:gmatch("%d+") do visit(c) end
    end
    tasks:close()
  end
  visit(tostring(pid))
  return total
end

-- Inodes of the LISTEN sockets on port (IPv4, from /proc/net/tcp), sorted and comma-joined:
-- the same string before and after means the same listening sockets.
function helpers.listen_inodes(port)
  local hex = ("%04X"):format(port)
  local t = {}
  for line in (read_file("/proc/net/tcp") or ""):gmatch("[^\n]+") do
    local lport, st, inode = line:match("^%s*%d+: %x+:(%x+) %x+:%x+ (%x%x) .- %d+ +%d+ (%d+)")
    if lport == hex and st == "0A" then t[#t + 1] = inode end
  end
  table.sort(t)
  return table.concat(t, ",")
end

-- Open descriptors of a process (nil if it is gone).
function helpers.fd_count(pid)
  local p = io.popen("ls /proc/" .. pid .. "/fd 2>/dev/null | wc -l")
  local n = tonumber(p:read("*a"))
  p:close()
  return n
end

-- True while pid exists and is not a zombie.
function helpers.pid_alive(pid)
  local st = read_file("/proc/" .. pid .. "/status")
  return st ~= nil and not st:match("State:%s*Z")
end

-- A throw-away PKI made with the openssl CLI in a fresh directory under <repo>/tmp/ (never a
-- committed key). Returns { dir, path(name), sh(cmd), make_ca(name, cn),
-- leaf(name, kind, subject, ca, ext_lines), remove() }; kind is "rsa" or "ec" (P-256).
function helpers.pki(prefix)
  local p = { dir = helpers.tmpname(prefix or "pki") }
  assert(os.execute("mkdir -p " .. shq(p.dir)))
  function p.path(name) return p.dir .. "/" .. name end
  function p.sh(cmd)
    local out, rc = run("cd " .. shq(p.dir) .. " && " .. cmd .. " 2>&1")
    assert(rc == 0, "failed: " .. cmd .. "\n" .. out)
  end
  local function keygen(kind)
    return kind == "rsa" and "-newkey rsa:2048" or "-newkey ec -pkeyopt ec_paramgen_curve:P-256"
  end
  function p.make_ca(name, cn)
    p.sh(("openssl req -x509 %s -nodes -keyout %s.key -out %s.pem -subj '/CN=%s' -days 30 "
      .. "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign")
      :format(keygen("ec"), name, name, cn))
  end
  function p.leaf(name, kind, subj, ca, ext)
    write_file(p.path(name .. ".ext"), "basicConstraints=CA:FALSE\n" .. ext)
    p.sh(("openssl req -new %s -nodes -keyout %s.key -out %s.csr -subj '%s'"):format(keygen(kind), name, name, subj))
    p.sh(("openssl x509 -req -in %s.csr -CA %s.pem -CAkey %s.key -CAcreateserial -out %s.pem -days 30 -extfile %s.ext")
      :format(name, ca, ca, name, name))
  end
  function p.remove() os.execute("rm -rf " .. shq(p.dir)) end
  return p
end

-- ------------------------------------------------------------------- ports

function helpers.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function port_open(port, host)
  local c = socket.tcp()
  c:settimeout(0.2)
  local ok = c:connect(host or "127.0.0.1", port)
  c:close()
  return ok ~= nil
end
helpers.port_open = port_open

-- ------------------------------------------------------------------ origin

-- Starts mr-origin. Returns { port, pid, stop(), log(), handle }.
function helpers.start_origin(opts)
  opts = opts or {}
  if not exists(helpers.origin_bin) then
    error("mr-origin not found at " .. helpers.origin_bin .. " (build it or set MR_ORIGIN_BIN)")
  end
  local cmd = shq(helpers.origin_bin) .. " --port " .. tonumber(opts.port or 0)
  if opts.host then cmd = cmd .. " --host " .. shq(opts.host) end
  local h = helpers.spawn(cmd, helpers.tmpname("origin", ".log"))
  local deadline = socket.gettime() + 5
  local port
  while true do
    port = tonumber((h.log():match("listening (%d+)")))
    if port then break end
    if not h.alive() or socket.gettime() > deadline then
      h.stop("KILL")
      error("mr-origin did not start (" .. cmd .. "):\n" .. h.log())
    end
    socket.sleep(0.01)
  end
  return {
    port = port,
    pid = h.pid,
    handle = h,
    log = h.log,
    stop = function(sig) return h.stop(sig) end,
  }
end

-- ---------------------------------------------------------------- moonring

-- opts.conf_path: write the config there instead of a fresh tmp name.
local function write_conf(conf, opts)
  local path = opts and opts.conf_path or helpers.tmpname("moonring", ".lua")
  write_file(path, conf)
  return path
end

-- The first port of the listen list in a config source, e.g. "127.0.0.1:8080".
local function first_listen_port(conf)
  local list = conf:match("listen%s*=%s*(%b{})")
  local port = list and list:match(":(%d+)[\"']")
  return tonumber(port or conf:match("listen%s*=%s*[\"'][^\"']*:(%d+)"))
end

-- The getaddrinfo shim built beside the binary (spec/fixtures/fake_dns.c): names ending in
-- ".mr.test" resolve without DNS, slowly or never; pass it as start_moonring's opts.preload.
helpers.fake_dns_lib = (helpers.moonring_bin:match("^(.*)/[^/]*$") or ".") .. "/libmr_fakedns.so"

-- "VAR=value ..." for a command line: opts.env (a table) and opts.preload (a library for
-- LD_PRELOAD; behind the ASan runtime when the binary is sanitized, which must come first).
local function env_prefix(opts)
  local parts = {}
  for k, v in pairs(opts.env or {}) do parts[#parts + 1] = k .. "=" .. shq(tostring(v)) end
  if opts.preload then
    local libs = opts.preload
    local asan = run("ldd " .. shq(helpers.moonring_bin) .. " 2>/dev/null"):match("libasan%.so[%.%d]* => (%S+)")
    if asan then libs = asan .. " " .. libs end
    parts[#parts + 1] = "LD_PRELOAD=" .. shq(libs)
  end
  table.sort(parts)
  return #parts > 0 and ("env " .. table.concat(parts, " ") .. " ") or ""
end

-- Starts moonring with `conf` (Lua source). opts.wait_port: port to wait for
-- (default: first listen port in conf); opts.args: extra arguments;
-- opts.timeout: start timeout (10 s); opts.env: environment variables (a table);
-- opts.preload: a library to preload (e.g. helpers.fake_dns_lib).
function helpers.start_moonring(conf, opts)
  opts = opts or {}
  if not exists(helpers.moonring_bin) then
    error("moonring not found at " .. helpers.moonring_bin .. " (build it or set MOONRING_BIN)")
  end
  local conf_path = write_conf(conf, opts)
  local log_path = conf_path:gsub("%.lua$", ".log")
  local cmd = env_prefix(opts) .. shq(helpers.moonring_bin) .. " -c " .. shq(conf_path)
    .. (opts.args and (" " .. opts.args) or "")
  local h = helpers.spawn(cmd, log_path)
  h.is_moonring = true
  local port = opts.wait_port
  if type(port) == "table" then port = port[1] end
  port = tonumber(port) or first_listen_port(conf)
  if not port then error("start_moonring: no opts.wait_port and no listen port found in conf") end
  local deadline = socket.gettime() + (opts.timeout or 10)
  while not port_open(port) do
    if not h.alive() then
      error(("moonring exited with code %s before listening on %d\n--- log %s:\n%s")
        :format(tostring(h.exit_code()), port, log_path, h.log()))
    end
    if socket.gettime() > deadline then
      h.stop("KILL")
      error(("moonring did not listen on %d within %ds\n--- log %s:\n%s")
        :format(port, opts.timeout or 10, log_path, h.log()))
    end
    socket.sleep(0.05)
  end
  return {
    pid = h.pid,
    port = port,
    conf_path = conf_path,
    log_path = log_path,
    handle = h,
    log = h.log,
    alive = h.alive,
    wait = h.wait,
    signal = h.signal,
    -- sig default TERM; waits up to 10 s; returns the exit code (nil if it had to be KILLed)
    stop = function(sig, timeout) return h.stop(sig, timeout) end,
    rss_kb = function() return helpers.rss_kb(h.pid) end,
  }
end

-- Runs `moonring -t -c <file>`; returns ok, output, conf_path.
function helpers.moonring_check(conf)
  local path = write_conf(conf)
  local out, rc = run(shq(helpers.moonring_bin) .. " -t -c " .. shq(path) .. " 2>&1")
  return rc == 0, out, path
end

-- -------------------------------------------------------------- HTTP client

-- A socket-like reader over a string, so responses can be parsed from bytes.
local function string_source(s)
  local pos = 1
  local src = {}
  function src:receive(pat)
    if pos > #s then return nil, "closed", "" end
    if pat == "*l" then
      local e = s:find("\n", pos, true)
      if not e then
        local rest = s:sub(pos); pos = #s + 1
        return nil, "closed", rest
      end
      local line = s:sub(pos, e - 1):gsub("\r$", "")
      pos = e + 1
      return line
    elseif pat == "*a" then
      local rest = s:sub(pos); pos = #s + 1
      return rest
    else
      local chunk = s:sub(pos, pos + pat - 1)
      pos = pos + #chunk
      if #chunk < pat then return nil, "closed", chunk end
      return chunk
    end
  end
  function src:remaining() return #s - pos + 1 end
  return src
end

local function no_body(status, method)
  return method == "HEAD" or (status >= 100 and status < 200) or status == 204 or status == 304
end

-- Reads one response (status line, headers, body) from a socket-like object.
local function read_response(sock, method)
  local line, err = sock:receive("*l")
  if not line then return nil, "reading status line: " .. tostring(err) end
  local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then return nil, "bad status line: " .. line:sub(1, 200) end
  local res = { status = status, status_line = line, headers = {}, header_list = {} }
  local raw = { line, "\r\n" }
  while true do
    line, err = sock:receive("*l")
    if not line then return nil, "reading headers: " .. tostring(err) end
    raw[#raw + 1] = line .. "\r\n"
    if line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if not name then return nil, "bad header line: " .. line:sub(1, 200) end
    local lname = name:lower()
    res.header_list[#res.header_list + 1] = { name, value }
    res.headers[lname] = res.headers[lname] and (res.headers[lname] .. ", " .. value) or value
  end
  res.raw_head = table.concat(raw)
  local h = res.headers
  if no_body(status, method) then
    res.body = ""
  elseif h["transfer-encoding"] and h["transfer-encoding"]:lower():find("chunked", 1, true) then
    local parts = {}
    while true do
      line, err = sock:receive("*l")
      if not line then return nil, "reading chunk size: " .. tostring(err) end
      local size = tonumber(line:match("^%s*(%x+)"), 16)
      if not size then return nil, "bad chunk size line: " .. line:sub(1, 200) end
      if size == 0 then break end
      local data, e2, partial = sock:receive(size)
      if not data then
        return nil, ("chunk cut short (%s) after %d of %d bytes"):format(tostring(e2), #(partial or ""), size)
      end
      parts[#parts + 1] = data
      line, err = sock:receive("*l")
      if line ~= "" then return nil, "missing CRLF after chunk: " .. tostring(line or err) end
    end
    res.trailers = {}
    while true do
      line, err = sock:receive("*l")
      if not line then return nil, "reading trailers: " .. tostring(err) end
      if line == "" then break end
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name then res.trailers[name:lower()] = value end
    end
    res.body = table.concat(parts)
  elseif h["content-length"] then
    local n = tonumber(h["content-length"])
    if not n then return nil, "bad content-length: " .. h["content-length"] end
    if n == 0 then
      res.body = ""
    else
      local data, e2, partial = sock:receive(n)
      if not data then
        return nil, ("body cut short (%s) after %d of %d bytes"):format(tostring(e2), #(partial or ""), n)
      end
      res.body = data
    end
  else
    local data, e2, partial = sock:receive("*a")
    res.body = data or partial or ""
    res.read_until_close = true
    if not data and e2 ~= "closed" then return nil, "reading body until close: " .. tostring(e2) end
  end
  return res
end
helpers.read_response = read_response

-- Opens a TCP connection to 127.0.0.1:port (or host). Returns a luasocket tcp object.
function helpers.connect(port, opts)
  opts = opts or {}
  local c = socket.tcp()
  c:settimeout(opts.timeout or 5)
  local ok, err = c:connect(opts.host or "127.0.0.1", port)
  if not ok then
    c:close()
    return nil, ("connect to %s:%s failed: %s"):format(opts.host or "127.0.0.1", tostring(port), tostring(err))
  end
  return cloexec(c)
end

local function parse_url(url)
  local host, port, path = url:match("^http://([^:/]+):?(%d*)(/?.*)$")
  if not host then error("bad url: " .. tostring(url)) end
  return host, tonumber(port) or 80, path ~= "" and path or "/"
end

-- Minimal HTTP/1.1 client. opts: headers ({name=value} or {{name,value},...}),
-- body (string), timeout (s, default 5), sock (reuse this connection; it is
-- left open), keepalive (don't add "Connection: close"), no_host (omit Host).
-- Interim 1xx responses (not 101) are collected in res.interim.
-- Returns { status, headers (lowercased, repeats comma-joined), header_list, body, raw_head } or nil, err.
function helpers.http(method, url, opts)
  opts = opts or {}
  local host, port, path = parse_url(url)
  local list = {}
  if opts.headers then
    if opts.headers[1] then
      for _, nv in ipairs(opts.headers) do list[#list + 1] = { nv[1], nv[2] } end
    else
      local names = {}
      for k in pairs(opts.headers) do names[#names + 1] = k end
      table.sort(names)
      for _, k in ipairs(names) do list[#list + 1] = { k, opts.headers[k] } end
    end
  end
  local has = {}
  for _, nv in ipairs(list) do has[nv[1]:lower()] = true end
  local lines = { ("%s %s HTTP/1.1\r\n"):format(method, path) }
  if not has.host and not opts.no_host then lines[#lines + 1] = ("Host: %s:%d\r\n"):format(host, port) end
  for _, nv in ipairs(list) do lines[#lines + 1] = ("%s: %s\r\n"):format(nv[1], nv[2]) end
  if opts.body and not has["content-length"] and not has["transfer-encoding"] then
    lines[#lines + 1] = ("Content-Length: %d\r\n"):format(#opts.body)
  end
  if not has.connection and not opts.sock and not opts.keepalive then
    lines[#lines + 1] = "Connection: close\r\n"
  end
  lines[#lines + 1] = "\r\n"
  local req = table.concat(lines) .. (opts.body or "")

  local sock, err = opts.sock
  if not sock then
    sock, err = helpers.connect(port, { host = host, timeout = opts.timeout })
    if not sock then return nil, err end
  else
    sock:settimeout(opts.timeout or 5)
  end
  local ok, serr = sock:send(req)
  if not ok then
    if not opts.sock then sock:close() end
    return nil, "send failed: " .. tostring(serr)
  end
  local res, rerr
  local interim = {}
  repeat
    res, rerr = read_response(sock, method)
    if res and res.status >= 100 and res.status < 200 and res.status ~= 101 then
      interim[#interim + 1] = res
      res.again = true
    end
  until not res or not res.again
  if not opts.sock then sock:close() end
  if not res then return nil, rerr end
  res.interim = interim
  return res
end

-- Reads from a connected socket until it closes, opts.timeout (default 3 s)
-- passes, or a stop condition holds: opts.until_bytes (number of bytes),
-- opts.pattern (Lua pattern on everything read), opts.responses (number of
-- complete responses, see parse_responses), opts.until_fn(data) -> bool.
-- Returns data, reason ("closed" | "timeout" | "matched").
function helpers.read(sock, opts)
  opts = opts or {}
  local deadline = socket.gettime() + (opts.timeout or 3)
  local parts = {}
  local function done(data)
    if opts.until_bytes and #data >= opts.until_bytes then return true end
    if opts.pattern and data:find(opts.pattern) then return true end
    if opts.responses then
      local list = helpers.parse_responses(data, opts.methods)
      if #list >= opts.responses then return true end
    end
    if opts.until_fn and opts.until_fn(data) then return true end
    return false
  end
  if (opts.until_bytes or opts.pattern or opts.responses or opts.until_fn) and done("") then return "", "matched" end
  while true do
    sock:settimeout(0)
    local data, err, partial = sock:receive(65536)
    data = data or partial
    if data and #data > 0 then
      parts[#parts + 1] = data
      local all = table.concat(parts)
      parts = { all }
      if done(all) then return all, "matched" end
    end
    if err == "closed" then return table.concat(parts), "closed" end
    if err and err ~= "timeout" then return table.concat(parts), err end
    local left = deadline - socket.gettime()
    if left <= 0 then return table.concat(parts), "timeout" end
    if not (data and #data > 0) then socket.select({ sock }, nil, math.min(left, 0.25)) end
  end
end

-- Sends bytes on a new connection and reads (see helpers.read for opts).
-- Returns data, reason. opts.keep_open: also return the socket (not closed).
function helpers.raw(port, bytes, opts)
  opts = opts or {}
  local sock, err = helpers.connect(port, opts)
  if not sock then return nil, err end
  if bytes and #bytes > 0 then
    local ok, serr = sock:send(bytes)
    if not ok then
      sock:close()
      return nil, "send failed: " .. tostring(serr)
    end
  end
  local data, reason = helpers.read(sock, opts)
  if opts.keep_open then return data, reason, sock end
  sock:close()
  return data, reason
end

-- Splits a byte stream of HTTP/1.1 responses into { {status, headers, body, ...}, ... }.
-- methods: optional list of request methods (so "HEAD" responses have no body).
-- Interim 1xx responses appear as entries of their own. A trailing incomplete
-- response is left out; the second return value is then "incomplete".
function helpers.parse_responses(bytes, methods)
  local src = string_source(bytes)
  local list, i = {}, 0
  while src:remaining() > 0 do
    local method = methods and methods[i + 1] or "GET"
    local res = read_response(src, method)
    if not res then return list, "incomplete" end
    list[#list + 1] = res
    if not (res.status >= 100 and res.status < 200 and res.status ~= 101) then i = i + 1 end
    if res.read_until_close then break end
  end
  return list
end

-- ------------------------------------------------------------------- tools

-- Runs curl -sS <args>; returns stdout, exit code, stderr.
function helpers.curl(args)
  local err_path = helpers.tmpname("curl", ".err")
  local out, rc = run("curl -sS " .. args .. " 2>" .. shq(err_path))
  local err = read_file(err_path) or ""
  os.remove(err_path)
  return out, rc, err
end

-- Parses wrk's text output.
function helpers.parse_wrk(out)
  local res = {
    output = out,
    requests = tonumber(out:match("(%d+) requests in")) or 0,
    rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)")) or 0,
    errors = { connect = 0, read = 0, write = 0, timeout = 0, status = 0 },
  }
  local c, r, w, t = out:match("Socket errors: connect (%d+), read (%d+), write (%d+), timeout (%d+)")
  if c then
    res.errors.connect, res.errors.read, res.errors.write, res.errors.timeout =
      tonumber(c), tonumber(r), tonumber(w), tonumber(t)
  end
  res.errors.status = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  return res
end

-- Runs wrk -t1 -c (opts.c or 10) -d (opts.d or "2s") --timeout 5s [opts.args] url.
-- Returns { requests, rps, errors = { connect, read, write, timeout, status }, output, exit_code }.
function helpers.wrk(url, opts)
  opts = opts or {}
  local cmd = ("wrk -t1 -c%d -d%s --timeout 5s %s %s 2>&1"):format(
    opts.c or 10, opts.d or "2s", opts.args or "", shq(url))
  local out, rc = run(cmd)
  local res = helpers.parse_wrk(out)
  res.exit_code = rc
  return res
end

-- Calls fn until it returns a truthy value (errors count as falsy) or timeout
-- (default 5 s) passes; returns that value, or raises the last error.
function helpers.eventually(fn, timeout, interval)
  local deadline = socket.gettime() + (timeout or 5)
  local last
  while true do
    local ok, v = pcall(fn)
    if ok and v then return v end
    last = ok and ("returned " .. tostring(v)) or tostring(v)
    if socket.gettime() > deadline then
      error(("eventually: condition not met within %ss: %s"):format(tostring(timeout or 5), last), 2)
    end
    socket.sleep(interval or 0.05)
  end
end

-- Deterministic pattern used by the origin: byte i = 'a' + i % 26.
function helpers.pattern(n, offset)
  offset = offset or 0
  local alphabet = "abcdefghijklmnopqrstuvwxyz"
  local rot = alphabet:sub(offset % 26 + 1) .. alphabet:sub(1, offset % 26)
  local reps = math.floor(n / 26) + 1
  return (rot:rep(reps)):sub(1, n)
end

-- FNV-1a 32 of a string as 8 lowercase hex digits (as /sink reports).
function helpers.fnv1a32(s)
  local bxor = require("bit").bxor
  local P, M = 16777619, 4294967296
  local h = 2166136261
  for i = 1, #s do
    h = bxor(h, s:byte(i)) % M               -- back to unsigned
    local lo, hi = h % 65536, math.floor(h / 65536)
    h = (lo * P + ((hi * P) % 65536) * 65536) % M  -- h * P mod 2^32, exact in doubles
  end
  return ("%08x"):format(h)
end

return helpers
