-- The loop's bookkeeping that idle connections no longer pay for in their own structs: receives
-- waiting for provided buffers (kept in a list by the loop, not linked through the ops) and
-- deferred callbacks (queued exactly while next is set). Scenarios in src/loop/loop_test_api.c,
-- on both backends.
local ffi = require "ffi"

local helpers = require "helpers"
local lib = helpers.core_lib_or_rerun("loop starved receives and deferred callbacks")
if not lib then return end
pcall(ffi.cdef, [[
int mr_loop_test_starved(int backend, char *why, size_t why_len);
int mr_loop_test_defer(int backend, char *why, size_t why_len);
]])

local BACKENDS = { io_uring = 1, epoll = 2 }

local function run(fn, backend)
  local why = ffi.new("char[256]")
  local rc = lib[fn](backend, why, 256)
  return rc, ffi.string(why)
end

for name, backend in pairs(BACKENDS) do
  describe("loop (" .. name .. ")", function()
    it("parks receives that find no buffer, cancels a parked one, resumes the others in order", function()
      local rc, why = run("mr_loop_test_starved", backend)
      if rc == 1 then return pending(why) end
      assert.equal(0, rc, why)
    end)

    it("runs deferred callbacks once per queueing, in order, re-queued ones in a later pass", function()
      local rc, why = run("mr_loop_test_defer", backend)
      if rc == 1 then return pending(why) end
      assert.equal(0, rc, why)
    end)
  end)
end
