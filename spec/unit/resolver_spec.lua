-- The asynchronous resolver (src/net/resolver.c) and the address parser (src/net/net.c), driven
-- through the core shared library: a loop runs on this thread inside mr_resolver_test_run, and
-- names ending in ".fake" are answered by a fake getaddrinfo (src/net/resolver_test_api.h).
local ffi = require "ffi"

local helpers = require "helpers"
local lib = helpers.core_lib_or_rerun("resolver")
if not lib then return end
pcall(ffi.cdef, [[
typedef struct mr_resolver_test mr_resolver_test_t;
mr_resolver_test_t *mr_resolver_test_new(int backend, uint32_t ttl_ms, uint32_t negative_ttl_ms, uint32_t cache_size,
                                         uint32_t max_pending, uint32_t threads);
const char *mr_resolver_test_backend(mr_resolver_test_t *t);
int mr_resolver_test_lookup(mr_resolver_test_t *t, const char *host, int port, int chain);
void mr_resolver_test_cancel(mr_resolver_test_t *t, int slot);
int mr_resolver_test_cached(mr_resolver_test_t *t, const char *host, int port, char *out, size_t len);
int mr_resolver_test_run(mr_resolver_test_t *t, int ms, int all);
int mr_resolver_test_result(mr_resolver_test_t *t, int slot, char *out, size_t len);
int mr_resolver_test_sync_calls(mr_resolver_test_t *t);
long long mr_resolver_test_stat(mr_resolver_test_t *t, const char *name);
int mr_resolver_test_close(mr_resolver_test_t *t, int ms);
void mr_resolver_test_free_after_loop(mr_resolver_test_t *t);
unsigned mr_resolver_test_live(void);
void mr_resolver_test_hold(int on);
int mr_resolver_test_calls(const char *name);
int mr_resolver_test_blocked(void);
void mr_resolver_test_reset(void);
int mr_resolver_test_parse(const char *s, size_t n, int port, char *out, size_t len);
]])

local EINVAL, ENOENT, EAGAIN, ENOSPC = 22, 2, 11, 28
local buf = ffi.new("char[2048]")

local function parse(s, port)
  local rc = lib.mr_resolver_test_parse(s, #s, port or -1, buf, 2048)
  return rc, ffi.string(buf)
end

describe("mr_addr_parse", function()
  it("parses numeric addresses, bracketed IPv6 and names, and says which", function()
    assert.same({ 0, "host=127.0.0.1 port=80 addr=127.0.0.1:80" }, { parse("127.0.0.1:80") })
    assert.same({ 0, "host=::1 port=8443 addr=[::1]:8443" }, { parse("[::1]:8443") })
    assert.same({ 1, "host=api.internal port=9000 addr=-" }, { parse("api.internal:9000") })
    assert.same({ 1, "host=Local_Host. port=1 addr=-" }, { parse("Local_Host.:1") })
    assert.same({ 0, "host=10.0.0.1 port=65535 addr=10.0.0.1:65535" }, { parse("10.0.0.1:065535") })
  end)

  it("refuses bad ports, empty hosts, bad names and unbracketed IPv6 with a reason", function()
    local cases = {
      { "127.0.0.1", "missing port" },
      { "127.0.0.1:", "port must be 1-65535" },
      { "127.0.0.1:0", "port must be 1-65535" },
      { "127.0.0.1:65536", "port must be 1-65535" },
      { "127.0.0.1:8x", "port must be 1-65535" },
      { "127.0.0.1:+80", "port must be 1-65535" },
      { "127.0.0.1:99999999999999999999", "port must be 1-65535" },
      { ":80", "empty host" },
      { "bad host:80", "invalid character in host name" },
      { "a/b:80", "invalid character in host name" },
      { "a..b:80", "empty label in host name" },
      { ".a:80", "empty label in host name" },
      { "-a.b:80", "host name label starts with '-'" },
      { ("a"):rep(64) .. ".b:80", "host name label longer than 63 characters" },
      { ("abcdefghi."):rep(26) .. "a:80", "host name too long" },
      { "1.2.3:80", "bad IPv4 address" },
      { "999.1.1.1:80", "bad IPv4 address" },
      { "::1:80", "an IPv6 address needs brackets" },
      { "[::1]", "expected \"[address]:port\"" },
      { "[::1:80", "missing ']'" },
      { "[1.2.3.4]:80", "brackets hold an IPv6 address only" },
      { "[::zz]:80", "bad IPv6 address" },
    }
    for _, c in ipairs(cases) do
      local rc, why = parse(c[1])
      assert.equal(-EINVAL, rc, c[1])
      assert.is_truthy(why:find(c[2], 1, true), c[1] .. ": " .. why)
    end
  end)

  it("takes a host without its port, IPv6 with or without brackets", function()
    assert.same({ 0, "host=::1 port=80 addr=[::1]:80" }, { parse("::1", 80) })
    assert.same({ 0, "host=::1 port=80 addr=[::1]:80" }, { parse("[::1]", 80) })
    assert.same({ 1, "host=localhost port=80 addr=-" }, { parse("localhost", 80) })
    assert.same({ -EINVAL, "port must be 1-65535" }, { parse("localhost", 0) })
    assert.same({ -EINVAL, "port must be 1-65535" }, { parse("localhost", 70000) })
    assert.same({ -EINVAL, "empty host" }, { parse("", 80) })
    assert.same({ -EINVAL, "invalid character in host name" }, { parse("a\0b", 80) })
  end)
end)

local function backends()
  local list = {}
  for _, b in ipairs({ 1, 2 }) do
    local t = lib.mr_resolver_test_new(b, 0, 0, 0, 0, 0)
    if t ~= nil then
      list[#list + 1] = { b, ffi.string(lib.mr_resolver_test_backend(t)) }
      lib.mr_resolver_test_free_after_loop(t)
    end
  end
  return list
end

for _, be in ipairs(backends()) do
  local backend, bname = be[1], be[2]

  describe("resolver (" .. bname .. ")", function()
    local t

    local function new(ttl, neg, cache, pending, threads)
      t = assert(lib.mr_resolver_test_new(backend, ttl or 0, neg or 0, cache or 0, pending or 0, threads or 0))
      assert(t ~= nil)
    end
    local function lookup(host, port, chain)
      return lib.mr_resolver_test_lookup(t, host, port or 80, chain and 1 or 0)
    end
    local function result(slot)
      local calls = lib.mr_resolver_test_result(t, slot, buf, 2048)
      return calls, ffi.string(buf)
    end
    local function stat(name) return tonumber(lib.mr_resolver_test_stat(t, name)) end
    local function run(ms, all) return lib.mr_resolver_test_run(t, ms or 2000, all == false and 0 or 1) end
    local function cached(host, port)
      local n = lib.mr_resolver_test_cached(t, host, port or 80, buf, 2048)
      return n, ffi.string(buf)
    end
    -- Runs the loop until fn() holds (helper threads work meanwhile), at most 2 s.
    local function until_(fn)
      for _ = 1, 400 do
        if fn() then return true end
        run(5, false)
      end
      return false
    end

    before_each(function()
      lib.mr_resolver_test_reset()
      lib.mr_resolver_test_hold(0)
      t = nil
    end)
    after_each(function()
      lib.mr_resolver_test_hold(0)
      if t ~= nil then assert.equal(0, lib.mr_resolver_test_close(t, 2000)) end
      t = nil
    end)

    it("answers numeric hosts without a lookup, but never from inside the submitting call", function()
      new()
      local a, b, c = lookup("127.0.0.1", 80), lookup("[::1]", 443), lookup("::1", 8080)
      assert.is_true(a >= 0 and b >= 0 and c >= 0)
      assert.equal(0, (result(a)))  -- nothing yet: the answer comes from the loop
      assert.equal(0, run())
      assert.same({ 1, "rc=0 n=1 127.0.0.1:80" }, { result(a) })
      assert.same({ 1, "rc=0 n=1 [::1]:443" }, { result(b) })
      assert.same({ 1, "rc=0 n=1 [::1]:8080" }, { result(c) })
      assert.equal(0, stat("lookups"))
      assert.equal(0, stat("threads")) -- no helper thread for numeric hosts
      assert.equal(0, lib.mr_resolver_test_sync_calls(t))
    end)

    it("refuses invalid hosts at once, with no callback to come", function()
      new()
      assert.equal(-EINVAL, lookup("bad name", 80))
      assert.equal(-EINVAL, lookup("", 80))
      assert.equal(-EINVAL, lookup("1.2.3", 80))
      assert.equal(0, stat("lookups"))
    end)

    it("resolves localhost with getaddrinfo once, then from the cache (any case)", function()
      new()
      local a = lookup("localhost", 8080)
      assert.equal(0, run())
      local calls, text = result(a)
      assert.equal(1, calls)
      assert.matches("^rc=0 n=%d+ 127%.0%.0%.1:8080", text) -- IPv4 first
      assert.equal(1, lib.mr_resolver_test_calls("localhost"))
      assert.equal(1, stat("lookups"))
      assert.equal(1, stat("threads"))
      -- a hit is still delivered from the loop, never from the submitting call
      local b, c = lookup("localhost", 9000), lookup("LOCALHOST", 9001)
      assert.equal(0, (result(b)))
      assert.equal(0, run())
      assert.matches("^rc=0 n=%d+ 127%.0%.0%.1:9000", select(2, result(b)))
      assert.matches("^rc=0 n=%d+ 127%.0%.0%.1:9001", select(2, result(c)))
      assert.equal(1, lib.mr_resolver_test_calls("localhost"))
      assert.equal(1, stat("lookups"))
      assert.equal(2, stat("hits"))
      local n, list = cached("localhost", 7)
      assert.is_true(n >= 1)
      assert.matches("^127%.0%.0%.1:7", list)
      assert.equal(0, (cached("unknown.fake")))
      assert.equal(0, lib.mr_resolver_test_sync_calls(t))
    end)

    it("answers a lookup made from inside a callback on a later turn", function()
      new()
      local a = lookup("chain.fake", 80, true)
      assert.equal(0, run())
      local _, text = result(a)
      local next_slot = tonumber(text:match("chained=(%d+)"))
      assert.is_number(next_slot, text)
      assert.equal(0, run())
      assert.same({ 1, "rc=0 n=1 127.0.0.1:80" }, { result(next_slot) })
      assert.equal(0, lib.mr_resolver_test_sync_calls(t))
      assert.equal(1, lib.mr_resolver_test_calls("chain.fake"))
    end)

    it("gives every address, IPv4 first, without duplicates, at most 16", function()
      new()
      local a, b = lookup("dual.fake", 80), lookup("many.fake", 81)
      assert.equal(0, run())
      assert.same({ 1, "rc=0 n=2 127.0.0.2:80 [::1]:80" }, { result(a) })
      local _, text = result(b)
      assert.matches("^rc=0 n=16 127%.0%.1%.1:81 127%.0%.1%.2:81 ", text)
      assert.matches(" 127%.0%.1%.16:81$", text)
    end)

    it("coalesces concurrent lookups of one name into one getaddrinfo", function()
      new()
      lib.mr_resolver_test_hold(1)
      local s = { lookup("hold1.fake", 80), lookup("hold1.fake", 81), lookup("Hold1.fake", 82) }
      assert.is_true(until_(function() return lib.mr_resolver_test_blocked() == 1 end))
      assert.equal(3, run(50, false)) -- all three still waiting
      assert.equal(1, lib.mr_resolver_test_calls("hold1.fake"))
      assert.equal(2, stat("coalesced"))
      assert.equal(1, stat("pending"))
      lib.mr_resolver_test_hold(0)
      assert.equal(0, run())
      for i, slot in ipairs(s) do
        assert.same({ 1, "rc=0 n=1 127.0.0.3:" .. (79 + i) }, { result(slot) })
      end
      assert.equal(1, lib.mr_resolver_test_calls("hold1.fake"))
      assert.equal(0, stat("pending"))
    end)

    it("never calls back a cancelled lookup, and still caches its answer", function()
      new()
      lib.mr_resolver_test_hold(1)
      local a, b = lookup("hold2.fake", 80), lookup("hold2.fake", 81)
      local c = lookup("hold3.fake", 80)
      assert.is_true(until_(function() return lib.mr_resolver_test_blocked() == 2 end))
      lib.mr_resolver_test_cancel(t, a)
      lib.mr_resolver_test_cancel(t, c) -- the last waiter of hold3: its answer still arrives
      lib.mr_resolver_test_cancel(t, c) -- twice is harmless
      lib.mr_resolver_test_hold(0)
      assert.equal(0, run())
      assert.is_true(until_(function() return stat("pending") == 0 end))
      run(50, false)
      assert.equal(0, (result(a)))
      assert.equal(0, (result(c)))
      assert.same({ 1, "rc=0 n=1 127.0.0.3:81" }, { result(b) })
      assert.same({ 1, "127.0.0.3:99" }, { cached("hold3.fake", 99) })
      assert.equal(1, lib.mr_resolver_test_calls("hold3.fake"))
      -- a cache hit cancelled before the end of the turn is not called back either
      local d = lookup("hold3.fake", 80)
      lib.mr_resolver_test_cancel(t, d)
      local e = lookup("127.0.0.1", 80)
      lib.mr_resolver_test_cancel(t, e)
      run(30, false)
      assert.equal(0, (result(d)))
      assert.equal(0, (result(e)))
    end)

    it("caches 'no such name' for negative_ttl, temporary failures not at all", function()
      new(10000, 100)
      local a = lookup("nx1.fake", 80)
      assert.equal(0, run())
      assert.same({ 1, "rc=" .. -ENOENT .. " n=0" }, { result(a) })
      local b = lookup("nx1.fake", 80)
      assert.equal(0, run())
      assert.same({ 1, "rc=" .. -ENOENT .. " n=0" }, { result(b) })
      assert.equal(-ENOENT, (cached("nx1.fake")))
      assert.equal(1, lib.mr_resolver_test_calls("nx1.fake"))
      assert.equal(2, stat("negative_hits"))
      run(150, false) -- past negative_ttl
      assert.equal(0, (cached("nx1.fake")))
      local c = lookup("nx1.fake", 80)
      assert.equal(0, run())
      assert.equal(-ENOENT, select(2, result(c)):match("rc=(%-?%d+)") + 0)
      assert.equal(2, lib.mr_resolver_test_calls("nx1.fake"))

      local d = lookup("again1.fake", 80)
      assert.equal(0, run())
      assert.same({ 1, "rc=" .. -EAGAIN .. " n=0" }, { result(d) })
      assert.equal(0, (cached("again1.fake")))
      local e = lookup("again1.fake", 80)
      assert.equal(0, run())
      assert.same({ 1, "rc=" .. -EAGAIN .. " n=0" }, { result(e) })
      assert.equal(2, lib.mr_resolver_test_calls("again1.fake"))
    end)

    it("asks again once the TTL is over", function()
      new(100)
      local a = lookup("ttl.fake", 80)
      assert.equal(0, run())
      assert.equal(1, (result(a)))
      assert.equal(1, (cached("ttl.fake")))
      run(150, false)
      assert.equal(0, (cached("ttl.fake")))
      local b = lookup("ttl.fake", 80)
      assert.equal(0, run())
      assert.same({ 1, "rc=0 n=1 127.0.0.1:80" }, { result(b) })
      assert.equal(2, lib.mr_resolver_test_calls("ttl.fake"))
    end)

    it("keeps at most cache_size names, evicting the least recently used", function()
      new(10000, 0, 2)
      for _, name in ipairs({ "e1.fake", "e2.fake" }) do lookup(name, 80) end
      assert.equal(0, run())
      assert.equal(1, (cached("e1.fake"))) -- e1 is now the most recently used
      lookup("e3.fake", 80)
      assert.equal(0, run())
      assert.equal(2, stat("entries"))
      assert.equal(0, (cached("e2.fake")))
      assert.equal(1, (cached("e1.fake")))
      assert.equal(1, (cached("e3.fake")))
    end)

    it("bounds the names in flight (max_pending) and spreads them over the helper threads", function()
      new(0, 0, 0, 2, 2)
      lib.mr_resolver_test_hold(1)
      local a, b = lookup("hold4.fake", 80), lookup("hold5.fake", 80)
      assert.equal(-ENOSPC, lookup("hold6.fake", 80))
      local c = lookup("hold4.fake", 81) -- joining one in flight is fine
      assert.is_true(c >= 0)
      -- both names are blocked at once: two threads, so neither waits behind the other
      assert.is_true(until_(function() return lib.mr_resolver_test_blocked() == 2 end))
      assert.equal(2, stat("threads"))
      lib.mr_resolver_test_hold(0)
      assert.equal(0, run())
      assert.equal(1, (result(a)))
      assert.equal(1, (result(b)))
      assert.equal(1, (result(c)))
      assert.is_true(lookup("hold6.fake", 80) >= 0)
      assert.equal(0, run())
    end)

    it("closes at once while a getaddrinfo is stuck, and calls nobody back", function()
      new()
      lib.mr_resolver_test_hold(1)
      local a = lookup("hold7.fake", 80)
      assert.is_true(until_(function() return lib.mr_resolver_test_blocked() == 1 end))
      local live = lib.mr_resolver_test_live()
      local t0 = os.clock()
      local tt = t
      t = nil
      assert.equal(0, lib.mr_resolver_test_close(tt, 2000))
      assert.equal(live - 1, lib.mr_resolver_test_live())
      assert.is_true(os.clock() - t0 < 1)
      assert.equal(1, lib.mr_resolver_test_blocked()) -- still stuck, nobody waited for it
      lib.mr_resolver_test_hold(0)
      local ok = false
      for _ = 1, 200 do
        if lib.mr_resolver_test_blocked() == 0 then ok = true break end
        os.execute("sleep 0.01")
      end
      assert.is_true(ok)
      assert.is_number(a)
    end)

    it("frees after its loop was freed (the worker's exit), with a lookup pending", function()
      new()
      lookup("pending.fake", 80)
      local live = lib.mr_resolver_test_live()
      local tt = t
      t = nil
      lib.mr_resolver_test_free_after_loop(tt)
      assert.equal(live - 1, lib.mr_resolver_test_live())
    end)
  end)
end
