-- Loop extra buffers (mr_loop_buf_get): the loop-owned buffers a TLS socket decrypts into,
-- addressed and reference-counted like provided buffers, driven through the core shared library.
local ffi = require "ffi"

local helpers = require "helpers"
local lib = helpers.core_lib_or_rerun("loop extra buffers")
if not lib then return end
pcall(ffi.cdef, [[
typedef struct mr_loop mr_loop_t;
typedef struct { uint32_t entries, buf_count, buf_size; int backend; } mr_loop_opts_t;
int mr_loop_init(mr_loop_t **out, const mr_loop_opts_t *opts);
void mr_loop_free(mr_loop_t *loop);
char *mr_loop_buf_ptr(mr_loop_t *loop, uint16_t bid);
void mr_loop_buf_ref(mr_loop_t *loop, uint16_t bid);
void mr_loop_buf_unref(mr_loop_t *loop, uint16_t bid);
int mr_loop_buf_get(mr_loop_t *loop);
]])

local EPOLL = 2

describe("loop extra buffers", function()
  local loop
  before_each(function()
    local out = ffi.new("mr_loop_t *[1]")
    local opts = ffi.new("mr_loop_opts_t", { entries = 64, buf_count = 16, buf_size = 4096, backend = EPOLL })
    assert.equal(0, lib.mr_loop_init(out, opts))
    loop = out[0]
  end)
  after_each(function() lib.mr_loop_free(loop) end)

  it("hands out ids above the provided ones, writable, recycled on the last unref", function()
    local a = lib.mr_loop_buf_get(loop)
    assert.is_true(a >= 16)
    local p = lib.mr_loop_buf_ptr(loop, a)
    ffi.fill(p, 4096, 65)
    lib.mr_loop_buf_ref(loop, a)
    lib.mr_loop_buf_unref(loop, a)
    assert.equal(65, p[4095]) -- still ours: one reference left
    lib.mr_loop_buf_unref(loop, a)
    assert.equal(a, lib.mr_loop_buf_get(loop)) -- the free list gives it back first
  end)

  it("survives a burst beyond what it keeps: 1000 held at once, all distinct and usable", function()
    for _ = 1, 2 do
      local ids, seen = {}, {}
      for i = 1, 1000 do
        local id = lib.mr_loop_buf_get(loop)
        assert.is_true(id >= 16, tostring(id))
        assert.is_nil(seen[id])
        seen[id] = true
        ids[i] = id
        local p = ffi.cast("uint8_t *", lib.mr_loop_buf_ptr(loop, id))
        p[0], p[4095] = i % 256, (i * 7) % 256
      end
      for i = 1, 1000 do
        local p = ffi.cast("uint8_t *", lib.mr_loop_buf_ptr(loop, ids[i]))
        assert.equal(i % 256, p[0])
        assert.equal((i * 7) % 256, p[4095])
      end
      -- released: 256 stay allocated, the memory of the others goes back (ASan checks the reuse)
      for i = 1, 1000 do lib.mr_loop_buf_unref(loop, ids[i]) end
    end
  end)
end)
