-- moonring.timer: callbacks on the worker's loop, each run in its own coroutine (so it may sleep,
-- use sockets or moonring.http). The C side (src/lua/lua.c, "fibers") owns the schedule; this
-- module keeps one record per fiber, keyed by the fiber's address. Detached on_log phases
-- (a yield in on_log) run as fibers too.
local ffi = require "ffi"
local moonring = require "moonring"
local base = require "moonring.base"

ffi.cdef [[
int mr_lua_timer_new(void *vm, double delay, double interval, int cap, void **out);
void mr_lua_timer_cancel(void *f);
int mr_lua_timer_count(void);
int mr_lua_vm_retired(void *vm);
]]

local C = ffi.C
local raw = require("moonring.thread").raw
local co_create, co_resume, co_status = raw.create, raw.resume, raw.status
local DONE, YIELD = base.RUN_DONE, base.RUN_YIELD
local DEFAULT_MAX = 1024

local M = {}
local fibers = {}
local outp = ffi.new("void *[1]")

local function runtime() return package.loaded["moonring.runtime"] end

local handle_methods = {}
local handle_mt = { __index = handle_methods }

-- Stops a pending timer (or an `every` timer's further runs). true, or nil and an error.
function handle_methods.cancel(h)
  local rec = fibers[h.key]
  if rec ~= h.rec or rec.cancelled then return nil, "the timer is not pending" end
  rec.cancelled = true
  if not rec.co then fibers[h.key] = nil end -- not running: C frees it now
  C.mr_lua_timer_cancel(rec.f)
  return true
end

local function new(api, delay, interval, fn, ...)
  if type(delay) ~= "number" or delay < 0 or delay ~= delay or delay == math.huge then
    error("moonring.timer." .. api .. ": the delay must be a non-negative number of seconds", 3)
  end
  if api == "every" and delay == 0 then error("moonring.timer.every(interval, fn): the interval must be > 0", 3) end
  if type(fn) ~= "function" then error("moonring.timer." .. api .. ": fn must be a function", 3) end
  local rt = runtime()
  if not rt or not rt.vm then return nil, "timers can only be created on a serving worker" end
  local lua_cfg = rt.config and rt.config.lua
  local max = lua_cfg and lua_cfg.max_timers or DEFAULT_MAX
  local rc = C.mr_lua_timer_new(rt.vm, delay, interval, max, outp)
  if rc ~= base.OK then
    if rc == base.BAD_CONTEXT then return nil, "timers can only be created on a serving worker" end
    if rc == base.RETIRED then return nil, "the configuration generation that would own the timer was retired by a reload" end
    if rc == base.LIMIT then return nil, "too many pending timers (lua.max_timers = " .. max .. ")" end
    return nil, base.ERR_NOMEM
  end
  local f = outp[0]
  local key = tonumber(ffi.cast("uintptr_t", f))
  local info = debug.getinfo(fn, "S")
  local rec = {
    f = f, waker = f, fn = fn, args = { n = select("#", ...), ... }, every = interval > 0,
    where = info and (info.short_src .. ":" .. (info.linedefined or "?")) or "?",
  }
  fibers[key] = rec
  return setmetatable({ key = key, rec = rec }, handle_mt)
end

-- Runs fn(premature, ...) after `delay` seconds, once.
function M.at(delay, fn, ...) return new("at", delay, 0, fn, ...) end

-- Runs fn(premature, ...) every `interval` seconds; the next run is scheduled when one ends.
function M.every(interval, fn, ...) return new("every", interval, interval, fn, ...) end

-- Pending timers on this worker (all generations).
function M.pending() return C.mr_lua_timer_count() end

local function body(rec, premature)
  rec.fn(premature, unpack(rec.args, 1, rec.args.n))
  if rec.threads then require("moonring.thread").drain(rec) end
  return DONE
end

-- Called by C when a fiber's park timer fires: starts the callback or resumes its coroutine.
-- Never raises: errors are logged here. Returns DONE, keep (reschedule an `every`) or YIELD,
-- what, arg.
function M._run(key, premature)
  local rec = fibers[key]
  if not rec then return DONE, false end
  local co = rec.co
  local ok, a, b
  moonring._cur = rec
  if co then
    ok, a, b = co_resume(co)
  else
    co = co_create(body)
    rec.co = co
    ok, a, b = co_resume(co, rec, premature)
  end
  moonring._cur = nil
  -- A detached on_log runs in a pooled phase coroutine, which ends its phase by yielding the
  -- runtime's FINISHED marker rather than by returning.
  if ok and co_status(co) == "suspended" and a ~= runtime().FINISHED then return YIELD, a, b end
  if not ok then
    local what = rec.where and ("timer callback " .. rec.where) or "on_log (detached)"
    moonring.log("error", what .. " failed: " .. debug.traceback(co, tostring(a)))
  end
  rec.co = nil
  if rec.socks then moonring._release(rec) end
  local rt = runtime()
  local keep = rec.every and not premature and not rec.cancelled and C.mr_lua_vm_retired(rt.vm) == 0
  if not keep then fibers[key] = nil end
  return DONE, keep
end

-- Called by C once the generation is live on this worker: runs the config's init_worker (a
-- place to start timer.every jobs) as a timer, so it may yield too.
function M._start()
  local rt = runtime()
  local init = rt and rt.config and rt.config.init_worker
  if not init then return end
  local ok, err = M.at(0, init)
  if not ok then moonring.log("error", "init_worker could not start: " .. tostring(err)) end
end

-- Called by C (mr_lua_detach): the request's parked on_log continues as fiber `key`.
function M._adopt(r, key, f)
  local st = runtime().adopt(r, key, f)
  fibers[key] = st
end

return M
