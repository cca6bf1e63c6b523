-- moonring.thread: light threads (spawn/wait/kill, OpenResty's ngx.thread), and the yield that
-- every waiting API goes through (moonring._yield), which also works from coroutines a script
-- creates itself.
--
-- An "owner" is what C resumes: a request's state or a timer's record (moonring._cur while it
-- runs), with its entry coroutine `o.co`. C parks the owner on ("sleep", seconds) or ("io") and
-- resumes it when its park timer (the owner's waker) fires: after the sleep, or at once when a
-- cosocket, the request body or a semaphore arms it. A wake-up is a hint, not a promise: every
-- waiting call checks its own condition again after it is resumed (a cosocket whether its
-- operation finished, sleep its deadline) and parks again if it is not met. That is what lets
-- several coroutines of one owner wait at once without C knowing about them:
--
-- * A coroutine of the script's own (coroutine.create/wrap) that calls a waiting API yields a
--   private marker to its resumer: the wrapped coroutine.resume parks in its place (recursively,
--   up to the entry), then resumes it. OpenResty wraps coroutine.* the same way; lua-resty-http
--   reads bodies in coroutines of its own.
-- * Light threads: once an owner spawned one, its entry coroutine parking means running the
--   scheduler below: park in C until the earliest deadline of every waiting thread (or until a
--   wake-up), then resume each thread that may be ready, in spawn order, then return to the
--   entry if it may be ready. A phase (or timer callback) ends only after all its threads did.
local moonring = require "moonring"

local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local co_status, co_running = coroutine.status, coroutine.running
local select, unpack, type, error, tostring = select, unpack, type, error, tostring

local M = {}
-- The unwrapped functions, for the runtime's own coroutines.
M.raw = { create = co_create, resume = co_resume, yield = co_yield, status = co_status, wrap = coroutine.wrap }

local IO = {}   -- a script's coroutine parks: its resumer parks in its place
local PARK = {} -- a light thread parks: back to the scheduler (or to spawn)
local EPS = 0.0005 -- a deadline this close counts as reached (the loop's timers have 1 ms steps)

-- Coroutines of the script's own that are parked on I/O: resuming one from elsewhere would
-- make its waiting call return before its operation finished.
local io_parked = setmetatable({}, { __mode = "k" })

local now = function() return moonring.monotonic() end
-- Set by the runtime: true when the current run is over lua.time_budget (raises).
M.check_budget = function() end

local function no_owner(what, level)
  error("moonring." .. what .. " can only be called from a request phase or a timer", level + 1)
end

local schedule

-- Parks the running coroutine until woken: what = "sleep" (arg = seconds) or "io" (until the
-- owner's waker fires). Returns nothing useful: callers check their own condition again.
function M.yield(what, arg)
  local co = co_running()
  local o = moonring._cur
  if co == nil or o == nil then no_owner(what, 2) end
  M.check_budget()
  local ts = o.threads
  if co == o.co then
    if not ts then return co_yield(what, arg) end
    return schedule(o, ts, what == "sleep" and now() + arg or nil)
  end
  local th = ts and ts.by_co[co]
  if th then
    th.deadline = what == "sleep" and now() + arg or nil
    return co_yield(PARK)
  end
  return co_yield(IO, what, arg)
end
moonring._yield = M.yield

-- coroutine.resume for scripts: a coroutine that parked on I/O makes its resumer park in its
-- place (M.yield is recursive through nested coroutines), then it is resumed.
local function resumed(co, ok, a, ...)
  if ok and a == IO then
    io_parked[co] = true
    M.yield(...)
    io_parked[co] = nil
    return resumed(co, co_resume(co))
  end
  return ok, a, ...
end

function M.resume(co, ...)
  if io_parked[co] then return false, "cannot resume a coroutine that is waiting for I/O" end
  return resumed(co, co_resume(co, ...))
end

local function wrap_ret(ok, ...)
  if ok then return ... end
  error((...), 0)
end

function M.wrap(f)
  local co = co_create(f)
  return function(...) return wrap_ret(M.resume(co, ...)) end
end

-- coroutine.yield at the top of a phase or a light thread (nothing of the script's own to
-- return to) gives the others a turn, as in OpenResty: it parks until the next loop turn.
function M.co_yield(...)
  local o = moonring._cur
  if o then
    local co = co_running()
    if co == o.co or (o.threads and o.threads.by_co[co]) then return M.yield("sleep", 0) end
  end
  return co_yield(...)
end

-- Light threads ----------------------------------------------------------------------------

local thread_mt = { __index = {} }
M.quiet = {} -- error values that end a thread without a log line
thread_mt.__tostring = function(t) return "moonring.thread (" .. (t.dead and "dead" or "alive") .. ")" end
local MAX_THREADS = 10000 -- alive at once per owner

local function ended(th, ok, ...)
  th.dead = true
  th.ts.alive = th.ts.alive - 1
  th.ts.by_co[th.co] = nil
  if ok then
    th.res = { n = select("#", ...) + 1, true, ... }
  else
    local err = ...
    th.res = { n = 2, false, err }
    -- ngx.exit in a thread ends it quietly (the layer registers its marker here)
    if not M.quiet[err] then moonring.log("error", "lua light thread aborted: " .. debug.traceback(th.co, tostring(err))) end
  end
  th.co = nil
end

local function stepped(th, ok, a, ...)
  local co = th.co
  if ok and co_status(co) ~= "dead" then
    -- parked (PARK), or a raw yield of a value: ready again at the next turn
    if a ~= PARK then th.deadline = now() end
    return
  end
  return ended(th, ok, a, ...)
end

-- Runs every waiting thread that may be ready (in spawn order; threads spawned meanwhile too).
local function run_ready(ts, t)
  local list = ts.list
  local i = 1
  while i <= #list do
    local th = list[i]
    if not th.dead and (not th.deadline or th.deadline <= t + EPS) and co_status(th.co) == "suspended" then
      th.deadline = nil
      stepped(th, co_resume(th.co))
    end
    i = i + 1
  end
end

-- The entry coroutine waits (until `deadline`, or for any wake-up): park in C until the earliest
-- deadline of all, run the threads that may be ready, return when the entry may be.
schedule = function(o, ts, deadline)
  while true do
    local d = deadline
    local list = ts.list
    for i = 1, #list do
      local th = list[i]
      if not th.dead and th.deadline and (not d or th.deadline < d) then d = th.deadline end
    end
    if o.woken then d = 0 end -- posted by one of its own threads: a turn for everyone
    if d then
      local left = d - now()
      co_yield("sleep", left > 0 and left or 0)
    else
      co_yield("io")
    end
    local t = now()
    -- a semaphore post for this owner: every waiting coroutine checks its condition again
    if o.woken then o.woken = nil; t = math.huge end
    run_ready(ts, t)
    -- forget threads that ended and were waited for (or killed)
    if #list > 64 then
      local keep = {}
      for i = 1, #list do if not list[i].reaped then keep[#keep + 1] = list[i] end end
      ts.list = keep
    end
    if not deadline or deadline <= t + EPS then return end
  end
end

local function owner_for(api, level)
  local o = moonring._cur
  if not o or co_running() == nil then
    error("moonring.thread." .. api .. " can only be called from a request phase or a timer", level + 1)
  end
  return o
end

-- Runs fn(...) in a new light thread of the current request (or timer) at once, until it first
-- waits or ends; returns the thread. It then runs whenever what it waits for is ready, while the
-- spawner goes on. The phase ends when all its threads ended.
function M.spawn(fn, ...)
  if type(fn) ~= "function" then error("moonring.thread.spawn(fn, ...): fn must be a function", 2) end
  local o = owner_for("spawn", 2)
  local ts = o.threads
  if not ts then
    ts = { list = {}, by_co = {}, alive = 0 }
    o.threads = ts
  end
  if ts.alive >= MAX_THREADS then error("moonring.thread.spawn: too many light threads (" .. MAX_THREADS .. ")", 2) end
  local co = co_create(fn)
  local th = setmetatable({ co = co, ts = ts, owner = o }, thread_mt)
  ts.list[#ts.list + 1] = th
  ts.by_co[co] = th
  ts.alive = ts.alive + 1
  stepped(th, co_resume(co, ...))
  return th
end

local function check_thread(api, th, o)
  if getmetatable(th) ~= thread_mt then error("moonring.thread." .. api .. ": expected a thread from moonring.thread.spawn", 3) end
  if th.owner ~= o then error("moonring.thread." .. api .. ": the thread belongs to another request or timer", 3) end
end

-- Waits for the first of the given threads to end: true and its results, or false and its
-- error. A thread can be waited for once.
function M.wait(...)
  local o = owner_for("wait", 2)
  local n = select("#", ...)
  if n == 0 then error("moonring.thread.wait(thread, ...): at least one thread", 2) end
  for i = 1, n do
    local th = select(i, ...)
    check_thread("wait", th, o)
    if th.reaped then return nil, "already waited or killed" end
  end
  while true do
    for i = 1, n do
      local th = select(i, ...)
      if th.dead then
        local r = th.res
        if not r then return nil, "already waited or killed" end -- killed while we waited
        th.reaped = true
        th.res = nil
        return unpack(r, 1, r.n)
      end
    end
    M.yield("io")
  end
end

-- Stops a thread that has not ended: true, or nil and an error. What it was waiting for is
-- abandoned (a socket it was using stays busy until its operation ends; the owner's end closes it).
function M.kill(th)
  local o = owner_for("kill", 2)
  check_thread("kill", th, o)
  if th.reaped then return nil, "already waited or killed" end
  if th.dead then return nil, "already terminated" end
  if co_status(th.co) ~= "suspended" then return nil, "a running thread cannot be killed" end
  th.ts.by_co[th.co] = nil
  th.ts.alive = th.ts.alive - 1
  th.dead, th.reaped, th.co, th.res = true, true, nil, nil
  return true
end

-- Called when the owner's entry function returned: waits until every thread ended.
function M.drain(o)
  local ts = o.threads
  while ts.alive > 0 do M.yield("io") end
end

-- For ngx.thread / ngx.semaphore: the light thread (or entry coroutine) running now, as a key.
function M.current()
  local o = moonring._cur
  local co = co_running()
  if not o or not co then return nil end
  return co
end

return M
