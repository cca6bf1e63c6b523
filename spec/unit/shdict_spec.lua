-- Shared dictionaries (src/lua/shdict.c + lua/moonring/shared.lua), driven outside the server
-- through the core shared library (MOONRING_FFI_LIB, default <repo>/build/libmoonring_ffi.so).
local ffi = require "ffi"

local helpers = require "helpers"
local lib, lib_path = helpers.core_lib_or_rerun("shared dicts")
if not lib then return end
pcall(ffi.cdef, [[
int mr_shdict_define(const char *name, size_t size);
void mr_shdict_reload_begin(void);
void mr_shdict_reload_end(void);
int mr_shdict_stress(void *d, int threads, int iters);
int usleep(unsigned int usec);
]])

local base = require "moonring.base"
local shared = require "moonring.shared"
shared.use_lib(lib)

local function sleep(s) ffi.C.usleep(s * 1e6) end

-- Every test gets fresh dicts: the registry is process-wide and dicts are never freed.
local names, seq = {}, 0
local function new_dict(size)
  seq = seq + 1
  local name = "t" .. seq
  assert.equal(base.OK, lib.mr_shdict_define(name, size or 1024 * 1024))
  names[#names + 1] = { name = name, size = size or 1024 * 1024 }
  local d = shared[name]
  assert.is_table(d)
  return d, name
end

-- Charge of one entry, as documented in shdict.c: 88-byte header + key + value + 8, in 16s.
local function charge(kl, vl) return math.ceil((88 + kl + vl + 8) / 16) * 16 end

describe("moonring.shared", function()
  describe("registry", function()
    it("finds defined dicts by name and returns nil for unknown names", function()
      local d, name = new_dict(65536)
      assert.equal(d, shared[name])   -- cached handle
      assert.equal("moonring.shared." .. name, tostring(d))
      assert.equal(name, d.name)
      assert.is_nil(shared.no_such_dict)
      assert.is_nil(shared[""])
      assert.is_nil(shared[42])
      assert.equal(65536, d:capacity())
      assert.equal(65536, d:free_space())
    end)

    it("is read-only", function()
      assert.has_error(function() shared.x = 1 end,
        'moonring.shared is read-only (declare dicts in the config: shared = { x = "10m" })')
    end)

    it("rejects bad definitions", function()
      assert.equal(base.BAD_ARG, lib.mr_shdict_define("", 1024))
      assert.equal(base.BAD_ARG, lib.mr_shdict_define("zero", 0))
      assert.equal(base.BAD_ARG, lib.mr_shdict_define(("n"):rep(256), 1024))
      assert.is_nil(shared.zero)
    end)

    it("redefining with the same or a bigger size keeps the contents", function()
      local d, name = new_dict(65536)
      assert.is_true((d:set("k", "v")))
      assert.equal(base.OK, lib.mr_shdict_define(name, 65536))
      assert.equal("v", d:get("k"))
      assert.equal(base.OK, lib.mr_shdict_define(name, 1024 * 1024))
      assert.equal("v", d:get("k"))
      assert.equal(1024 * 1024, d:capacity())
      for i = 1, 5000 do assert.is_true((d:set("k" .. i, i))) end   -- rehashed buckets work
      for i = 1, 5000 do assert.equal(i, d:get("k" .. i)) end
    end)

    it("shrinking keeps what fits and evicts the least recently used rest", function()
      local d, name = new_dict(65536)
      local v = ("x"):rep(1000)
      for i = 1, 40 do assert.is_true((d:set("k" .. i, v))) end
      assert.equal(base.OK, lib.mr_shdict_define(name, 60000))   -- still fits: nothing lost
      for i = 1, 40 do assert.equal(v, d:get("k" .. i)) end
      assert.equal(base.OK, lib.mr_shdict_define(name, 10 * charge(3, 1000)))
      local kept = d:get_keys(0)
      assert.equal(10, #kept)
      for i = 31, 40 do assert.equal(v, d:get("k" .. i)) end   -- the 10 most recently used
      assert.is_nil(d:get("k30"))
      assert.is_true(d:free_space() >= 0)
    end)
  end)

  describe("get/set", function()
    local d
    before_each(function() d = new_dict() end)

    it("stores strings, numbers and booleans", function()
      assert.same({ true, nil, false }, { d:set("s", "hello") })
      assert.same({ true, nil, false }, { d:set("n", 3.25) })
      assert.same({ true, nil, false }, { d:set("i", -42) })
      assert.same({ true, nil, false }, { d:set("big", 2 ^ 53) })
      assert.same({ true, nil, false }, { d:set("t", true) })
      assert.same({ true, nil, false }, { d:set("f", false) })
      assert.same({ true, nil, false }, { d:set("e", "") })
      assert.equal("hello", d:get("s"))
      assert.equal(3.25, d:get("n"))
      assert.equal(-42, d:get("i"))
      assert.equal(2 ^ 53, d:get("big"))
      assert.equal(true, d:get("t"))
      assert.equal(false, d:get("f"))
      assert.equal("", d:get("e"))
      assert.equal(math.huge, (d:set("inf", math.huge)) and d:get("inf"))
      assert.same({}, { d:get("missing") })
    end)

    it("overwrites values, changing type and size", function()
      assert.is_true((d:set("k", "short")))
      assert.is_true((d:set("k", ("y"):rep(5000))))
      assert.equal(("y"):rep(5000), d:get("k"))
      assert.is_true((d:set("k", 7)))
      assert.equal(7, d:get("k"))
      assert.is_true((d:set("k", "s")))
      assert.equal("s", d:get("k"))
      assert.is_true((d:set("k", true)))
      assert.equal(true, d:get("k"))
    end)

    it("returns flags only when non-zero", function()
      assert.is_true((d:set("a", "v", 0, 7)))
      assert.same({ "v", 7 }, { d:get("a") })
      assert.is_true((d:set("b", "v", 0, 0)))
      assert.same({ "v" }, { d:get("b") })
      assert.is_true((d:set("c", 1, nil, 4294967295)))
      assert.same({ 1, 4294967295 }, { d:get("c") })
    end)

    it("set with nil deletes", function()
      assert.is_true((d:set("k", "v")))
      assert.same({ true, nil, false }, { d:set("k", nil) })
      assert.is_nil(d:get("k"))
      assert.same({ true, nil, false }, { d:set("never", nil) })
    end)

    it("is binary-safe in keys and values", function()
      local k, v = "a\0b\0", "x\0y\0\0z"
      assert.is_true((d:set(k, v)))
      assert.equal(v, d:get(k))
      assert.is_nil(d:get("a"))
      assert.is_nil(d:get("a\0b"))
      local all = ""
      for i = 0, 255 do all = all .. string.char(i) end
      assert.is_true((d:set(all, all)))
      assert.equal(all, d:get(all))
    end)

    it("round-trips values larger than the Lua-side buffer", function()
      for _, n in ipairs({ 16383, 16384, 16385, 100000, 300000 }) do
        local v = ("abcdefgh"):rep(math.ceil(n / 8)):sub(1, n)
        assert.is_true((d:set("big", v)))
        assert.equal(v, d:get("big"))
        assert.equal(v, (d:get_stale("big")))
      end
    end)

    it("converts number keys like ngx.shared", function()
      assert.is_true((d:set(12, "twelve")))
      assert.equal("twelve", d:get("12"))
      assert.equal("twelve", d:get(12))
    end)

    it("returns nil, err for empty and too long keys", function()
      assert.same({ nil, "empty key" }, { d:get("") })
      assert.same({ false, "empty key", false }, { d:set("", 1) })
      assert.same({ nil, "empty key" }, { d:incr("", 1) })
      local long = ("k"):rep(65536)
      assert.same({ nil, "key too long" }, { d:get(long) })
      assert.same({ false, "key too long", false }, { d:set(long, 1) })
      local max = ("k"):rep(65535)
      assert.is_true((d:set(max, "ok")))
      assert.equal("ok", d:get(max))
    end)

    it("rejects values bigger than the dict cleanly, keeping the old value", function()
      local small = new_dict(65536)
      assert.is_true((small:set("k", "old")))
      assert.same({ false, "no memory", false }, { small:set("k", ("x"):rep(65536)) })
      assert.same({ false, "no memory", false }, { small:set("k2", ("x"):rep(70000)) })
      assert.equal("old", small:get("k"))
      assert.is_nil(small:get("k2"))
      -- the largest value that fits in an empty-ish dict is accepted (evicting the rest)
      local fits = 65536 - charge(2, 0) - 16
      local ok, err, forcible = small:set("k3", ("x"):rep(fits))
      assert.same({ true, nil, true }, { ok, err, forcible })
      assert.is_nil(small:get("k"))
    end)

    it("accounts key + value + overhead against the budget", function()
      local dd = new_dict(65536)
      assert.is_true((dd:set("key", ("v"):rep(100))))
      assert.equal(65536 - charge(3, 100), dd:free_space())
      assert.is_true((dd:set("k2", 1)))
      assert.equal(65536 - charge(3, 100) - charge(2, 0), dd:free_space())
      dd:delete("key")
      dd:delete("k2")
      assert.equal(65536, dd:free_space())
    end)
  end)

  describe("add/replace/delete", function()
    local d
    before_each(function() d = new_dict() end)

    it("add fails with 'exists' on a live key", function()
      assert.same({ true, nil, false }, { d:add("k", 1) })
      assert.same({ false, "exists", false }, { d:add("k", 2) })
      assert.equal(1, d:get("k"))
    end)

    it("add succeeds over an expired key", function()
      assert.is_true((d:set("k", 1, 0.02)))
      sleep(0.06)
      assert.same({ true, nil, false }, { d:add("k", 2) })
      assert.equal(2, d:get("k"))
      assert.equal(0, d:ttl("k"))
    end)

    it("add of nil on a missing key is a no-op", function()
      assert.same({ true, nil, false }, { d:add("k", nil) })
      assert.is_nil(d:get("k"))
    end)

    it("replace fails with 'not found' on a missing or expired key", function()
      assert.same({ false, "not found", false }, { d:replace("k", 1) })
      assert.is_nil(d:get("k"))
      assert.is_true((d:set("e", 1, 0.02)))
      sleep(0.06)
      assert.same({ false, "not found", false }, { d:replace("e", 2) })
    end)

    it("replace overwrites a live key, with a new ttl and flags", function()
      assert.is_true((d:set("k", "a", 100, 3)))
      assert.same({ true, nil, false }, { d:replace("k", "b", 0, 5) })
      assert.same({ "b", 5 }, { d:get("k") })
      assert.equal(0, d:ttl("k"))
      assert.same({ true, nil, false }, { d:replace("k", nil) })   -- deletes
      assert.is_nil(d:get("k"))
    end)

    it("delete removes a key and succeeds on missing keys", function()
      assert.is_true((d:set("k", 1)))
      assert.is_true(d:delete("k"))
      assert.is_nil(d:get("k"))
      assert.is_true(d:delete("k"))
      assert.same({ false, "empty key" }, { d:delete("") })
    end)
  end)

  describe("incr", function()
    local d
    before_each(function() d = new_dict() end)

    it("fails with 'not found' without init", function()
      assert.same({ nil, "not found" }, { d:incr("n", 1) })
      assert.is_nil(d:get("n"))
    end)

    it("initialises with init (+ value), returning value, nil, forcible", function()
      assert.same({ 11, nil, false }, { d:incr("n", 1, 10) })
      assert.same({ 12, nil, false }, { d:incr("n", 1, 10) })   -- init ignored when present
      assert.same({ 10 }, { d:incr("n", -2) })
      assert.equal(10, d:get("n"))
    end)

    it("adds floats and negative numbers", function()
      assert.is_true((d:set("n", 1.5)))
      assert.equal(1.75, d:incr("n", 0.25))
      assert.equal(-8.25, d:incr("n", -10))
    end)

    it("fails with 'not a number' on other values", function()
      assert.is_true((d:set("s", "12")))
      assert.same({ nil, "not a number" }, { d:incr("s", 1) })
      assert.same({ nil, "not a number" }, { d:incr("s", 1, 0) })
      assert.is_true((d:set("b", true)))
      assert.same({ nil, "not a number" }, { d:incr("b", 1) })
      assert.equal("12", d:get("s"))
    end)

    it("applies init_ttl only when initialising, and keeps an existing ttl and flags", function()
      assert.equal(1, (d:incr("n", 1, 0, 0.3)))
      local ttl = d:ttl("n")
      assert.is_true(ttl > 0 and ttl <= 0.3)
      assert.equal(2, (d:incr("n", 1, 0, 100)))
      assert.is_true(d:ttl("n") <= 0.3)
      sleep(0.4)
      assert.is_nil(d:get("n"))
      assert.same({ nil, "not found" }, { d:incr("n", 1) })
      assert.same({ 5, nil, false }, { d:incr("n", 5, 0) })
      assert.equal(0, d:ttl("n"))
      assert.is_true((d:set("f", 1, 0, 9)))
      assert.equal(2, d:incr("f", 1))
      assert.same({ 2, 9 }, { d:get("f") })
    end)

    it("restarts an expired counter from init", function()
      assert.is_true((d:set("n", 100, 0.02)))
      sleep(0.06)
      assert.same({ 1, nil, false }, { d:incr("n", 1, 0) })
    end)
  end)

  describe("ttl/expire", function()
    local d
    before_each(function() d = new_dict() end)

    it("ttl is 0 without expiry, the remaining seconds otherwise", function()
      assert.is_true((d:set("k", 1)))
      assert.equal(0, d:ttl("k"))
      assert.is_true((d:set("t", 1, 10)))
      local ttl = d:ttl("t")
      assert.is_true(ttl > 9.9 and ttl <= 10, tostring(ttl))
      assert.same({ nil, "not found" }, { d:ttl("missing") })
    end)

    it("expire sets, changes and removes the expiry", function()
      assert.same({ nil, "not found" }, { d:expire("k", 1) })
      assert.is_true((d:set("k", "v")))
      assert.is_true(d:expire("k", 5))
      assert.is_true(d:ttl("k") > 4.9)
      assert.is_true(d:expire("k", 0))
      assert.equal(0, d:ttl("k"))
      assert.is_true(d:expire("k", 0.03))
      sleep(0.08)
      assert.is_nil(d:get("k"))
      assert.same({ nil, "not found" }, { d:expire("k", 10) })
    end)

    it("expired entries are invisible, get_stale still sees them until reclaimed", function()
      assert.is_true((d:set("k", "v", 0.3, 3)))
      assert.equal("v", d:get("k"))
      sleep(0.4)
      assert.same({ "v", 3, true }, { d:get_stale("k") })
      assert.same({ nil, "not found" }, { d:ttl("k") })   -- reclaims it
      assert.same({ nil }, { d:get_stale("k") })
      assert.is_true((d:set("live", "x")))
      assert.same({ "x", nil, false }, { d:get_stale("live") })
    end)

    it("reclaims expired memory lazily and via flush_expired", function()
      local dd = new_dict(65536)
      for i = 1, 20 do assert.is_true((dd:set("k" .. i, ("v"):rep(100), 0.03))) end
      local used = 0
      for i = 1, 20 do used = used + charge(#("k" .. i), 100) end
      assert.equal(used, 65536 - dd:free_space())
      sleep(0.08)
      assert.equal(20, dd:flush_expired())
      assert.equal(65536, dd:free_space())
      for i = 1, 5 do assert.is_true((dd:set("k" .. i, 1, 0.03))) end
      sleep(0.08)
      assert.equal(2, dd:flush_expired(2))
      assert.equal(3, dd:flush_expired(0))
    end)
  end)

  describe("get_keys/flush_all", function()
    local d
    before_each(function() d = new_dict() end)

    it("lists live keys, most recently used first, default max 1024, 0 = all", function()
      for i = 1, 2000 do assert.is_true((d:set("k" .. i, i))) end
      assert.is_true((d:set("gone", 1, 0.02)))
      sleep(0.06)
      assert.equal(1024, #d:get_keys())
      assert.equal(2000, #d:get_keys(0))
      assert.same({ "k2000", "k1999", "k1998" }, d:get_keys(3))
      d:get("k1")
      assert.same({ "k1", "k2000" }, d:get_keys(2))
      local seen = {}
      for _, k in ipairs(d:get_keys(0)) do seen[k] = true end
      for i = 1, 2000 do assert.is_true(seen["k" .. i]) end
      assert.is_nil(seen.gone)
    end)

    it("returns binary and long keys intact, growing its buffer", function()
      local long = ("L"):rep(65535)
      assert.is_true((d:set(long, 1)))
      assert.is_true((d:set("a\0b", 2)))
      local keys = d:get_keys(0)
      table.sort(keys, function(a, b) return #a < #b end)
      assert.same({ "a\0b", long }, keys)
    end)

    it("flush_all makes everything invisible at once", function()
      for i = 1, 100 do assert.is_true((d:set("k" .. i, ("v"):rep(50)))) end
      local free = d:free_space()
      assert.is_true(d:flush_all())
      assert.equal(free, d:free_space())   -- O(1): nothing freed yet
      assert.same({ ("v"):rep(50), nil, true }, { d:get_stale("k50") })
      assert.is_nil(d:get("k1"))            -- reclaimed on access
      assert.same({ nil, "not found" }, { d:incr("k2", 1) })
      assert.same({ true, nil, false }, { d:add("k3", "new") })   -- also reclaims 2 at the LRU tail
      assert.equal("new", d:get("k3"))
      assert.equal(96, d:flush_expired())
      assert.same({ "k3" }, d:get_keys(0))
      assert.equal(d:capacity() - charge(2, 3), d:free_space())
    end)

    it("rejects a bad max", function()
      assert.has_error(function() d:get_keys(-1) end,
        "moonring.shared: get_keys max must be a non-negative integer, got -1")
      assert.has_error(function() d:get_keys("3") end)
      assert.has_error(function() d:flush_expired(1.5) end)
    end)
  end)

  describe("LRU eviction", function()
    it("evicts least recently used entries under a small budget, reporting forcible", function()
      local d = new_dict(65536)
      local v = ("x"):rep(1000)
      local per = math.floor(65536 / charge(4, 1000))
      local first_forcible
      for i = 1, 200 do
        local ok, err, forcible = d:set(("k%03d"):format(i), v)
        assert.is_true(ok, err)
        if forcible and not first_forcible then first_forcible = i end
      end
      assert.equal(per + 1, first_forcible)
      assert.equal(per, #d:get_keys(0))
      assert.is_nil(d:get("k001"))
      assert.equal(v, d:get("k200"))
      assert.equal(v, d:get(("k%03d"):format(200 - per + 1)))
      assert.is_true(d:free_space() < charge(4, 1000))
    end)

    it("keeps recently read entries", function()
      local d = new_dict(65536)
      local v = ("x"):rep(1000)
      local per = math.floor(65536 / charge(4, 1000))
      for i = 1, per do assert.is_true((d:set(("k%03d"):format(i), v))) end
      assert.equal(v, d:get("k001"))   -- touch: now most recently used
      local _, _, forcible = d:set("new1", v)
      assert.is_true(forcible)
      assert.equal(v, d:get("k001"))
      assert.is_nil(d:get("k002"))
      assert.equal(v, d:get("k003"))
    end)

    it("evicts expired entries first, without forcible", function()
      local d = new_dict(65536)
      local v = ("x"):rep(1000)
      local per = math.floor(65536 / charge(4, 1000))
      local half = math.floor(per / 2)
      for i = 1, per do assert.is_true((d:set(("k%03d"):format(i), v, i <= half and 0.02 or 0))) end
      sleep(0.06)
      for i = 1, half do
        local ok, err, forcible = d:set(("n%03d"):format(i), v)
        assert.same({ true, nil, false }, { ok, err, forcible })
      end
      for i = half + 1, per do assert.equal(v, d:get(("k%03d"):format(i))) end
      -- and dead entries a little away from the tail too (bounded scan)
      local dd = new_dict(65536)
      for i = 1, per do assert.is_true((dd:set(("k%03d"):format(i), v, i % 2 == 0 and 0.02 or 0))) end
      sleep(0.06)
      assert.same({ true, nil, false }, { dd:set("new", v) })
      assert.equal(v, dd:get("k001"))
    end)

    it("safe_set and safe_add fail with 'no memory' instead of evicting", function()
      local d = new_dict(65536)
      local v = ("x"):rep(1000)
      local per = math.floor(65536 / charge(4, 1000))
      for i = 1, per do assert.is_true((d:safe_set(("k%03d"):format(i), v))) end
      assert.same({ false, "no memory", false }, { d:safe_set("more", v) })
      assert.same({ false, "no memory", false }, { d:safe_add("more", v) })
      assert.same({ false, "exists", false }, { d:safe_add("k001", v) })
      assert.equal(per, #d:get_keys(0))
      assert.same({ true, nil, false }, { d:safe_set("k001", "small") })   -- in place / shrinking is fine
      assert.same({ true, nil, false }, { d:safe_set("more", v) })
      -- safe stores may reclaim expired entries
      assert.is_true((d:set("k002", v, 0.02)))
      d:get("k003")
      sleep(0.06)
      assert.same({ true, nil, false }, { d:safe_set("more2", ("y"):rep(1000)) })
    end)
  end)

  describe("misuse raises errors at the caller", function()
    local d
    before_each(function() d = new_dict() end)
    local here = "shdict_spec.lua:%d+: moonring.shared: "

    local function raises(pat, f)
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches(pat, err)
    end

    it("bad keys", function()
      raises(here .. "key must be a string, got nil", function() d:get(nil) end)
      raises(here .. "key must be a string, got table", function() d:set({}, 1) end)
      raises(here .. "key must be a string, got boolean", function() d:incr(true, 1) end)
      raises(here .. "key must be a string, got nil", function() d:add(nil, 1) end)
      raises(here .. "key must be a string, got nil", function() d:delete() end)
      raises(here .. "key must be a string, got nil", function() d:ttl() end)
      raises(here .. "key must be a string, got nil", function() d:expire(nil, 1) end)
    end)

    it("bad values, ttls, flags", function()
      raises(here .. "value must be a string, number, boolean or nil, got table", function() d:set("k", {}) end)
      raises(here .. "value must be .*, got function", function() d:add("k", print) end)
      raises(here .. "value must be .*, got cdata", function() d:replace("k", ffi.new("int")) end)
      raises(here .. "exptime must be a non%-negative number %(seconds%), got %-1", function() d:set("k", 1, -1) end)
      raises(here .. "exptime must be", function() d:set("k", 1, "10") end)
      raises(here .. "exptime must be", function() d:set("k", 1, 0 / 0) end)
      raises(here .. "flags must be an integer", function() d:set("k", 1, 0, 1.5) end)
      raises(here .. "flags must be an integer", function() d:set("k", 1, 0, 2 ^ 32) end)
      raises(here .. "flags must be an integer", function() d:set("k", 1, 0, -1) end)
      raises(here .. "expire%(key, exptime%): exptime missing", function() d:expire("k") end)
    end)

    it("bad incr arguments", function()
      raises(here .. "incr value must be a number, got string", function() d:incr("k", "1") end)
      raises(here .. "incr value must be a number, got nil", function() d:incr("k") end)
      raises(here .. "incr init must be a number, got string", function() d:incr("k", 1, "0") end)
      raises(here .. "incr init_ttl requires init", function() d:incr("k", 1, nil, 10) end)
      raises(here .. "init_ttl must be a non%-negative number", function() d:incr("k", 1, 0, -1) end)
    end)

    it("method called with a dot", function()
      raises(here .. "call dict:get%(...%) with a colon, on a dict", function() d.get("k") end)
      raises(here .. "call dict:set%(...%)", function() d.set("k", 1) end)
      raises(here .. "call dict:incr%(...%)", function() d.incr("k", 1) end)
      raises(here .. "call dict:get_keys%(...%)", function() d.get_keys() end)
      raises(here .. "call dict:flush_all%(...%)", function() d.flush_all(1) end)
    end)
  end)

  describe("thread safety", function()
    it("concurrent incr from many threads loses no update", function()
      local d = new_dict(65536)
      local threads, iters = 8, 20000
      assert.equal(threads * iters, lib.mr_shdict_stress(d._d, threads, iters))
      assert.equal(threads * iters, d:get("stress:counter"))
      assert.is_true(d:free_space() >= 0 and d:free_space() <= 65536)
      -- the dict is still consistent after the churn
      for _, k in ipairs(d:get_keys(0)) do d:delete(k) end
      assert.is_true(d:flush_expired() >= 0)
      assert.equal(65536, d:free_space())
    end)
  end)

  describe("JIT", function()
    it("compiles get/set/incr loops without trace aborts in moonring.shared", function()
      -- Anything not compilable in moonring.shared shows up either as an abort located there or,
      -- for NYI builtins, as a trace "stitch" (LuaJIT 2.1 falls back to the interpreter for the
      -- call); and the spec's loop must end up as a looping root trace.
      local jutil = require "jit.util"
      local vmdef = require "jit.vmdef"
      -- the trace handler runs inside the VM: keep it free of global (busted env) lookups
      local type, tostring = type, tostring
      local d = new_dict(4 * 1024 * 1024)
      local aborts, stitches, loops, starts = {}, {}, 0, {}
      local function loc(func, pc)
        local fi = jutil.funcinfo(func, pc)
        return (fi.source or "?") .. ":" .. tostring(fi.currentline)
      end
      local function on_trace(what, tr, func, pc, otr, oex)
        if what == "start" then
          starts[tr] = loc(func, pc)
        elseif what == "abort" then
          local msg = vmdef.traceerr[otr] or tostring(otr)
          if type(oex) == "number" and msg:find("%%d") then msg = msg:format(oex) end
          local where = loc(func, pc)
          if where:find("moonring/shared.lua", 1, true) or msg:find("NYI", 1, true) then
            aborts[#aborts + 1] = where .. ": " .. msg
          end
        elseif what == "stop" then
          local ti = jutil.traceinfo(tr)
          if ti and ti.linktype == "stitch" then stitches[#stitches + 1] = starts[tr] end
          if ti and ti.linktype == "loop" and (starts[tr] or ""):find("shdict_spec.lua", 1, true) then
            loops = loops + 1
          end
        end
      end
      local keys = {}
      for i = 0, 99 do keys[i] = "key:" .. i end
      jit.flush()
      jit.attach(on_trace, "trace")
      local sum = 0
      local ok, err = pcall(function()
        for i = 1, 100000 do
          local k = keys[i % 100]
          if not d:set(k, "value") then error("set failed") end
          local v = d:get(k)
          local n = d:incr("ctr", 1, 0)
          d:set("num", i, 0)
          sum = sum + #v + d:get("num") + n
        end
      end)
      jit.attach(on_trace)
      assert.is_true(ok, err)
      assert.equal(100000, d:get("ctr"))
      assert.same({}, aborts)
      assert.same({}, stitches)
      assert.is_true(loops >= 1, "the loop was not compiled")
    end)
  end)

  -- Last: retiring touches the process-wide registry.
  describe("reload", function()
    it("retires dicts no longer defined and revives them empty when defined again", function()
      local d, name = new_dict(65536)
      assert.is_true((d:set("k", "v")))
      lib.mr_shdict_reload_begin()
      for _, n in ipairs(names) do
        if n.name ~= name then assert.equal(base.OK, lib.mr_shdict_define(n.name, n.size)) end
      end
      lib.mr_shdict_reload_end()
      shared.use_lib(lib)   -- a fresh VM: drops cached handles
      assert.is_nil(shared[name])
      -- a VM still holding the handle sees an empty dict that refuses stores
      assert.is_nil(d:get("k"))
      assert.same({ false, "dict removed", false }, { d:set("k", "v") })
      assert.same({ nil, "dict removed" }, { d:incr("n", 1, 0) })
      assert.same({}, d:get_keys(0))
      assert.is_true(d:delete("k"))
      -- others kept their contents
      local other = shared[names[1].name]
      assert.is_table(other)
      -- defining it again revives it, empty
      assert.equal(base.OK, lib.mr_shdict_define(name, 65536))
      local again = shared[name]
      assert.is_nil(again:get("k"))
      assert.is_true((again:set("k", "v2")))
      assert.equal("v2", d:get("k"))   -- same C dict behind the old handle
    end)
  end)

  describe("lists", function()
    it("pushes and pops at both ends, strings and numbers", function()
      local d = new_dict()
      assert.equal(1, d:rpush("l", "b"))
      assert.equal(2, d:rpush("l", 3.5))
      assert.equal(3, d:lpush("l", "a"))
      assert.equal(3, d:llen("l"))
      assert.equal("a", d:lpop("l"))
      assert.equal(3.5, d:rpop("l"))
      assert.equal("b", d:rpop("l"))
      assert.is_nil(d:rpop("l"))
      assert.equal(0, d:llen("l"))
      assert.is_nil(d:get("l")) -- the list went with its last item
    end)

    it("keeps lists and other values apart", function()
      local d = new_dict()
      d:set("s", "x")
      assert.same({ nil, "value not a list" }, { d:lpush("s", 1) })
      assert.same({ nil, "value not a list" }, { d:lpop("s") })
      assert.same({ nil, "value not a list" }, { d:llen("s") })
      d:rpush("l", 1)
      assert.same({ nil, "value is a list" }, { d:get("l") })
      assert.same({ nil, "bad value type" }, { d:rpush("l", {}) })
      assert.same({ nil, "not a number" }, { d:incr("l", 1) })
    end)

    it("grows past the value buffer and through many pushes", function()
      local d = new_dict()
      local big = ("x"):rep(40000)
      d:rpush("big", big)
      assert.equal(big, d:lpop("big"))
      for i = 1, 1000 do d:rpush("q", "item" .. i) end
      assert.equal(1000, d:llen("q"))
      for i = 1, 1000 do assert.equal("item" .. i, d:lpop("q")) end
      assert.equal(0, d:llen("q"))
    end)

    it("charges lists to the budget and expires them", function()
      local d = new_dict(8192)
      local ok, err
      for i = 1, 1000 do
        ok, err = d:rpush("full", ("y"):rep(100))
        if not ok then break end
      end
      assert.is_nil(ok)
      assert.equal("no memory", err)
      d:rpush("t", 1)
      d:expire("t", 0.05)
      sleep(0.1)
      assert.equal(0, d:llen("t"))
    end)
  end)
end)
