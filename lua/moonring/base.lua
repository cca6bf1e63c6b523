-- The return codes of the C functions Lua calls through FFI, mirrored once from src/util/export.h
-- (lua-resty-core's base.lua model), and the error strings OpenResty libraries compare against.
-- Lua code names codes (base.AGAIN), never their values, and never decodes errno numbers: C maps
-- errno to these codes, and a module's own exported function describes what a code cannot
-- (mr_cosock_error).
--
--   local base = require "moonring.base"
--   local OK, AGAIN = base.OK, base.AGAIN     -- locals on hot paths (upvalues JIT-compile well)
local base = {
  OK = 0,             -- done (functions documented to return a count return it, >= 0)
  ERROR = -1,         -- failed; the module's error-string function says why
  AGAIN = -2,         -- in progress: yield until woken, then collect the result
  BUSY = -3,          -- the object is running another operation
  DECLINED = -5,      -- not found
  BAD_ARG = -6,       -- an argument is out of its domain
  BAD_CONTEXT = -7,   -- not allowed now
  NOMEM = -8,         -- out of memory, or the object's memory budget is too small
  TIMEOUT = -9,
  CLOSED = -10,
  REFUSED = -11,
  RESET = -12,
  EXISTS = -13,
  BAD_TYPE = -14,     -- the stored value has the wrong type for the operation
  TOO_SMALL = -15,    -- the caller's buffer is too small: *len holds the size needed
  LIMIT = -16,        -- over a limit: a size (the caller's max) or a count cap
  RETIRED = -17,      -- the object belongs to a configuration a reload retired
}

-- Error strings as OpenResty returns them (lua-resty-* libraries test for these exact strings).
base.ERR_TIMEOUT = "timeout"
base.ERR_CLOSED = "closed"
base.ERR_REFUSED = "connection refused"
base.ERR_RESET = "connection reset by peer"
base.ERR_NOMEM = "no memory"
base.ERR_NOT_FOUND = "not found"
base.ERR_EXISTS = "exists"
base.ERR_BUSY = "busy"

-- The default string for a code; modules add their own for codes whose meaning depends on the
-- call (base.LIMIT: "too large", "too many pending timers", ...).
local messages = {
  [base.TIMEOUT] = base.ERR_TIMEOUT,
  [base.CLOSED] = base.ERR_CLOSED,
  [base.REFUSED] = base.ERR_REFUSED,
  [base.RESET] = base.ERR_RESET,
  [base.NOMEM] = base.ERR_NOMEM,
  [base.DECLINED] = base.ERR_NOT_FOUND,
  [base.EXISTS] = base.ERR_EXISTS,
  [base.BUSY] = base.ERR_BUSY,
  [base.BAD_ARG] = "bad argument",
  [base.BAD_CONTEXT] = "not allowed now",
  [base.BAD_TYPE] = "wrong type",
  [base.LIMIT] = "over the limit",
  [base.RETIRED] = "retired by a reload",
  [base.ERROR] = "error",
}

-- The message for code rc, or nil when rc is not a failure code.
function base.errstr(rc)
  return messages[rc]
end

-- The phase protocol of src/lua/lua.h (MR_LUA_DONE, _YIELD, _RESPONDED): what a phase or a fiber
-- run returns to C (Lua errors are raised, not returned).
base.RUN_DONE, base.RUN_YIELD, base.RUN_RESPONDED = 0, 1, 2

return base
