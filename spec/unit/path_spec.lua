-- Path and host normalisation (src/http/path.c) through its test API over LuaJIT FFI on
-- libmoonring_ffi.so: every confusion class an attacker would try, with the expected normal form
-- or refusal, then host names, route prefix / exact / strip_prefix semantics, and properties over
-- generated inputs (idempotence, the output bound, every spelling of a path converging).
-- docs/routing.md explains each decision; keep the two in step.
local helpers = require "helpers"
local ffi = require "ffi"

local lib = helpers.core_lib_or_rerun("path normalisation")
if not lib then return end

ffi.cdef [[
int mr_path_test_normalize(int merge_slashes, int escaped_slashes, int path_params, const char *in, size_t len,
                           char *out, size_t cap, size_t *outlen, const char **why);
int mr_host_test_normalize(const char *in, size_t len, char *out, size_t cap, size_t *outlen, int *port,
                           const char **why);
int mr_path_test_prefix_match(const char *prefix, size_t plen, const char *path, size_t len);
int mr_path_test_exact_match(const char *exact, size_t elen, const char *path, size_t len);
int mr_path_test_strip_prefix(const char *prefix, size_t plen, const char *path, size_t len, char *out, size_t cap);
]]

local CHANGED, SAME, REFUSED = 0, 1, -1
local REJECT, KEEP, DECODE = 0, 1, 2          -- escaped_slashes
local P_LAST, P_KEEP, P_REJECT = 0, 1, 2      -- path_params
local CAP = 1024 * 1024
local outbuf = ffi.new("char[?]", CAP)
local outlen = ffi.new("size_t[1]")
local why = ffi.new("const char *[1]")
local port = ffi.new("int[1]")

-- Returns rc, output (or nil), reason (or nil). pol = { merge = bool, slashes = n, params = n }.
local function norm(path, pol, cap)
  pol = pol or {}
  why[0] = nil
  local rc = lib.mr_path_test_normalize(pol.merge == false and 0 or 1, pol.slashes or REJECT, pol.params or P_LAST,
    path, #path, outbuf, cap or CAP, outlen, why)
  if rc == -2 then error("in-place normalisation differs from out-of-place for " .. ("%q"):format(path)) end
  if rc < 0 then return rc, nil, ffi.string(why[0]) end
  return rc, ffi.string(outbuf, outlen[0]), nil
end

local function host(h)
  why[0] = nil
  local rc = lib.mr_host_test_normalize(h, #h, outbuf, CAP, outlen, port, why)
  if rc < 0 then return nil, ffi.string(why[0]) end
  return ffi.string(outbuf, outlen[0]), port[0]
end

local function show(s) return ("%q"):format(s) end

-- { input, expected } where expected is:
--   true          already normal (MR_PATH_SAME)
--   "string"      the normal form (MR_PATH_CHANGED)
--   { refuse = "substring of the reason" }
-- and an optional third element: the policy.
local function check_cases(cases)
  for _, c in ipairs(cases) do
    local input, want, pol = c[1], c[2], c[3]
    local rc, out, reason = norm(input, pol)
    local label = show(input)
    if pol then
      label = label .. (" (merge %s, slashes %s, params %s)"):format(tostring(pol.merge ~= false), pol.slashes or REJECT,
        pol.params or P_LAST)
    end
    if want == true then
      assert.equal(SAME, rc, label .. " should be unchanged, got " .. tostring(out or reason))
      assert.equal(input, out, label)
    elseif type(want) == "string" then
      assert.equal(CHANGED, rc, label .. " should become " .. show(want) .. ", got " .. tostring(out or reason))
      assert.equal(want, out, label)
      assert.is_true(#out <= #input, label .. ": output longer than input")
    else
      assert.equal(REFUSED, rc, label .. " should be refused, got " .. tostring(out))
      assert.is_truthy(reason:find(want.refuse, 1, true), label .. ": reason " .. show(reason)
        .. " does not mention " .. show(want.refuse))
    end
  end
end

local function refuse(r) return { refuse = r } end

describe("path normalisation", function()
  it("leaves normal paths alone (one scan, no copy)", function()
    check_cases {
      { "/", true }, { "/a/b/c", true }, { "/api/v1/users/123", true }, { "/a/b/", true },
      { "/%20", true }, { "/caf%C3%A9", true }, { "/%25", true }, { "/a%3Bb", true },
      { "/a:b@c!$&'()*+,=", true }, { "/a~b-c_d.e", true },
      { "/...", true }, { "/a/.../b", true }, { "/.a", true }, { "/a.", true }, { "/..a", true }, { "/a..", true },
      { "/a.b/c..d/...e", true },
      -- printable bytes outside RFC 3986 pass as they are: no upstream treats them as separators
      { '/a{b}|c^d`e"f<g>h[i]', true },
      { "/admin;jsessionid=1", true },
    }
  end)

  it("decodes encoded unreserved characters, once, and uppercases the hex of the rest", function()
    check_cases {
      { "/%61dmin", "/admin" }, { "/%41%42", "/AB" }, { "/adm%69n", "/admin" }, { "/%7e%7E", "/~~" },
      { "/%2D%5F%2E%30", "/-_.0" },
      { "/%c3%a9", "/%C3%A9" }, { "/a%3bb", "/a%3Bb" }, { "/%2a", "/%2A" }, { "/%e9t%e9", "/%E9t%E9" },
      -- double encoding: %25 is '%', which is not unreserved, so it stays encoded and nothing after
      -- it is decoded again; the "2e" that follows is two literal characters
      { "/%252e", true }, { "/%252E", true }, { "/%252e%252e/admin", true }, { "/%25%32%65", "/%252e" },
      { "/%25%32%65%25%32%65/x", "/%252e%252e/x" }, { "/%252f", true },
    }
  end)

  it("removes dot-segments, plain, encoded, mixed-case and half-encoded", function()
    check_cases {
      { "/./admin", "/admin" }, { "/x/../admin", "/admin" }, { "/a/b/../../admin", "/admin" },
      { "/a/./b/.", "/a/b/" }, { "/admin/.", "/admin/" }, { "/admin/..", "/" }, { "/admin/x/..", "/admin/" },
      { "/.", "/" }, { "/a/b/c/./../../g", "/a/g" }, { "/a/./././b", "/a/b" },
      { "/%2e/admin", "/admin" }, { "/%2E/admin", "/admin" }, { "/x/%2e%2e/admin", "/admin" },
      { "/x/%2E%2e/admin", "/admin" }, { "/x/.%2e/admin", "/admin" }, { "/x/%2e./admin", "/admin" },
      { "/x/%2E./admin", "/admin" }, { "/x/.%2E/admin", "/admin" },
      { "/x/%2e%2E%2e/admin", "/x/.../admin" }, { "/x/..%2e", "/x/..." }, { "/x/%2e%2ex", "/x/..x" },
      { "/x/./", "/x/" }, { "/x/.//admin", "/x/admin" }, { "/x//../admin", "/admin" },
      { "/x/%2e", "/x/" }, { "/x/%2e%2e", "/" },
    }
  end)

  it("refuses dot-segments that climb above the root, however they are spelled", function()
    local above = refuse("above the root")
    check_cases {
      { "/..", above }, { "/../admin", above }, { "/a/../../admin", above }, { "/%2e%2e", above },
      { "/%2E%2E/admin", above }, { "/.%2e/admin", above }, { "/%2e./admin", above }, { "//../admin", above },
      { "/./../admin", above }, { "/a/./../../b", above }, { "/a/b/../../../c", above },
    }
  end)

  it("merges repeated slashes by default, and keeps them when merging is off", function()
    local nomerge = { merge = false }
    check_cases {
      { "//admin", "/admin" }, { "///admin", "/admin" }, { "/a//b///c", "/a/b/c" }, { "/a//", "/a/" }, { "//", "/" },
      { "/a/.//b", "/a/b" },
      { "//admin", true, nomerge }, { "/a//b", true, nomerge }, { "/a///", true, nomerge },
      { "/a/./b", "/a/b", nomerge }, { "/a/.//b", "/a//b", nomerge },
      -- without merging, ".." removes the empty segment as RFC 3986 5.2.4 does
      { "/x//../admin", "/x/admin", nomerge }, { "//../admin", "/admin", nomerge }, { "//..", "/", nomerge },
    }
  end)

  it("refuses encoded slashes and backslashes by default, keeps or decodes them on request", function()
    local keep, decode = { slashes = KEEP }, { slashes = DECODE }
    check_cases {
      { "/admin%2Fx", refuse("%2F") }, { "/admin%2fx", refuse("%2F") }, { "/admin%5Cx", refuse("%5C") },
      { "/admin%5cx", refuse("%5C") }, { "/x/%2e%2e%2fadmin", refuse("%2F") }, { "/%2F", refuse("%2F") },
      { "/a%2Fb", true, keep }, { "/a%2fb", "/a%2Fb", keep }, { "/a%5cb", "/a%5Cb", keep },
      -- kept encoded, it is part of its segment: "..%2F" is not a dot-segment
      { "/x/..%2Fadmin", true, keep }, { "/x/%2e%2e%2fadmin", "/x/..%2Fadmin", keep },
      { "/a%2fb", "/a/b", decode }, { "/a%5Cb", "/a/b", decode }, { "/a%2F%2Fb", "/a/b", decode },
      { "/a%2F%2Fb", "/a//b", { slashes = DECODE, merge = false } }, { "/x%2F..%2Fadmin", "/admin", decode },
      { "/%2e%2e%2fadmin", refuse("above the root"), decode }, { "/%2Fadmin", "/admin", decode },
      { "/a%5C..%5Cadmin", "/admin", decode }, { "/a/.%2F", "/a/", decode },
    }
  end)

  it("refuses invalid and truncated %-encodings", function()
    local bad = refuse("invalid %-encoding")
    check_cases {
      { "/%", bad }, { "/%4", bad }, { "/%zz", bad }, { "/%4g", bad }, { "/%g4", bad }, { "/a%", bad },
      { "/a%2", bad }, { "/%%41", bad }, { "/%+1", bad }, { "/% 1", bad }, { "/%-1", bad }, { "/%0x41", bad },
      { "/%\xc3\xa9", bad },
    }
  end)

  it("refuses control bytes, raw or encoded, including NUL", function()
    check_cases {
      { "/%00", refuse("encoded control") }, { "/a%00.txt", refuse("encoded control") },
      { "/%0a", refuse("encoded control") }, { "/%0D%0A", refuse("encoded control") },
      { "/%1f", refuse("encoded control") }, { "/%7f", refuse("encoded control") },
      { "/%09", refuse("encoded control") },
      { "/a\0b", refuse("control byte") }, { "/a\tb", refuse("control byte") }, { "/a b", refuse("control byte") },
      { "/a\127b", refuse("control byte") }, { "/a\r\nX: y", refuse("control byte") }, { "/\0", refuse("control byte") },
    }
  end)

  it("refuses raw non-ASCII bytes and overlong UTF-8, keeps valid encoded UTF-8 and Latin-1", function()
    local overlong = refuse("overlong")
    check_cases {
      { "/caf\xc3\xa9", refuse("non-ASCII") }, { "/\xc0\xaf", refuse("non-ASCII") }, { "/\xff", refuse("non-ASCII") },
      { "/%C0%AF", overlong }, { "/%c0%ae%c0%ae/admin", overlong }, { "/%C1%9C", overlong }, { "/%C0%80", overlong },
      { "/%E0%80%AF", overlong }, { "/%e0%81%ae", overlong }, { "/%F0%80%80%AF", overlong },
      { "/%F8%80%80%80%AF", overlong }, { "/%FC%80%80%80%80%AF", overlong }, { "/a/%C0%AE%C0%AE/b", overlong },
      { "/%C3%A9", true }, { "/%E2%82%AC", true }, { "/%F0%9F%98%80", true }, { "/%E0%A0%80", true },
      { "/%F0%90%80%80", true }, { "/%E9t%E9", true }, { "/%C0", true }, { "/%C0a", true }, { "/%C0%41", "/%C0A" },
    }
  end)

  it("refuses backslashes, fragments and queries in the path", function()
    check_cases {
      { "/a\\b", refuse("backslash") }, { "/..\\admin", refuse("backslash") }, { "\\admin", refuse("start") },
      { "/x\\..\\admin", refuse("backslash") },
      { "/admin#x", refuse("'#'") }, { "/#/../admin", refuse("'#'") }, { "/a?b", refuse("'?'") },
    }
  end)

  it("handles ';' path parameters: last segment only by default, never on a dot-segment", function()
    local keep, rej = { params = P_KEEP }, { params = P_REJECT }
    local dotp = refuse("dot-segment with ';'")
    check_cases {
      { "/admin;x", true }, { "/admin;jsessionid=1", true }, { "/a/b;v=1;w=2", true }, { "/;x", true },
      { "/admin;x/secret", refuse("before the last segment") }, { "/;x/admin", refuse("before the last segment") },
      { "/a;x/", refuse("before the last segment") },
      { "/..;/admin", dotp }, { "/public/..;/admin", dotp }, { "/.;/admin", dotp }, { "/admin/..;", dotp },
      { "/%2e%2e;/admin", dotp }, { "/a/.;x", dotp }, { "/a/..;x=1", dotp },
      { "/..;/admin", dotp, keep }, { "/a/.;x", dotp, keep }, { "/x/%2E%2E;a/admin", dotp, keep },
      { "/admin;x/secret", true, keep }, { "/a;b/../c", "/c", keep }, { "/a;/b", true, keep },
      { "/admin;x", refuse("parameters"), rej }, { "/;", refuse("parameters"), rej }, { "/a%3Bb", true, rej },
      -- an encoded ';' is data, not a parameter separator
      { "/a%3bx/b", "/a%3Bx/b" }, { "/..%3B/admin", true, keep }, { "/x/..%3b/admin", "/x/..%3B/admin" },
    }
  end)

  it("refuses what is not an origin-form path", function()
    check_cases {
      { "", refuse("empty path") }, { "*", refuse("does not start with '/'") }, { "admin", refuse("start") },
      { "%2Fadmin", refuse("start") }, { "./admin", refuse("start") }, { "http://a/b", refuse("start") },
    }
  end)

  it("handles very long paths in linear time", function()
    local n = 20000
    local t0 = os.clock()
    check_cases {
      { "/" .. ("a/"):rep(n), true },
      { "/" .. ("./"):rep(n) .. "x", "/x" },
      { ("/a"):rep(n) .. ("/.."):rep(n), "/" },
      { ("/a"):rep(n) .. ("/.."):rep(n + 1), refuse("above the root") },
      { "/" .. ("%41"):rep(n), "/" .. ("A"):rep(n) },
      { ("/"):rep(n) .. "x", "/x" },
      { "/" .. ("%2e%2e/"):rep(1), refuse("above the root") },
      { "/" .. ("x"):rep(300000), true },
    }
    assert.is_true(os.clock() - t0 < 2, "long paths took " .. (os.clock() - t0) .. " s")
  end)

  it("refuses an output buffer smaller than the input, and accepts one of exactly its size", function()
    local rc, _, reason = norm("/a/../b", nil, 6)
    assert.equal(REFUSED, rc)
    assert.equal("output buffer too small", reason)
    local rc2, out = norm("/a/../b", nil, 7)
    assert.equal(CHANGED, rc2)
    assert.equal("/b", out)
  end)
end)

-- Properties over generated inputs ---------------------------------------------------------------

local TOKENS = { "/", "/", "/", "a", "b", "admin", ".", "..", "...", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F",
  "%5c", "%41", "%61", "%7e", "%7E", "%25", "%252e", ";", ";x", "%3b", "%c3%a9", "%C0", "%af", "~", "-", "%20",
  "//", "/./", "/../", "%zz", "%", "\\", "%00", "%e0%80", "x.", "{", "@", ":" }

local POLICIES = {}
for _, merge in ipairs { true, false } do
  for _, slashes in ipairs { REJECT, KEEP, DECODE } do
    for _, params in ipairs { P_LAST, P_KEEP, P_REJECT } do
      POLICIES[#POLICIES + 1] = { merge = merge, slashes = slashes, params = params }
    end
  end
end

local function gen(rng)
  local parts = { "/" }
  for i = 2, rng(1, 14) do parts[i] = TOKENS[rng(#TOKENS)] end
  return table.concat(parts)
end

-- What every output must look like, per policy.
local function check_shape(out, pol, input)
  local label = show(input) .. " -> " .. show(out)
  assert.equal("/", out:sub(1, 1), label)
  assert.is_nil(out:find("\0", 1, true), label)
  if pol.merge then assert.is_nil(out:find("//", 1, true), label) end
  for seg in (out .. "/"):gmatch("/([^/]*)") do
    local name = seg:match("^([^;]*)")
    assert.is_true(name ~= "." and name ~= "..", label .. ": dot-segment left")
  end
  if pol.slashes ~= KEEP then assert.is_nil(out:upper():find("%2F", 1, true), label) end
  if pol.slashes ~= KEEP then assert.is_nil(out:upper():find("%5C", 1, true), label) end
  for hex in out:gmatch("%%(..)") do
    assert.equal(hex:upper(), hex, label .. ": lowercase hex")
    local c = string.char(tonumber(hex, 16))
    assert.is_nil(c:find("[%w%-%._~]"), label .. ": encoded unreserved character left")
  end
  assert.is_nil(out:find("[%z\1-\32\127-\255\\#?]"), label .. ": forbidden byte")
  if pol.params == P_REJECT then assert.is_nil(out:find(";", 1, true), label) end
  if pol.params == P_LAST then assert.is_nil(out:find(";[^/]*/"), label) end
end

describe("path normalisation properties", function()
  local seed = tonumber(os.getenv("PATH_SEED") or "") or os.time()
  math.randomseed(seed)
  local rng = math.random

  it("is idempotent and within its bound on generated paths, under every policy (seed " .. seed .. ")", function()
    local accepted, changed = 0, 0
    for _ = 1, 4000 do
      local input = gen(rng)
      for _, pol in ipairs(POLICIES) do
        local rc, out = norm(input, pol)
        if rc ~= REFUSED then
          accepted = accepted + 1
          if rc == CHANGED then changed = changed + 1 end
          assert.is_true(#out <= #input, show(input) .. ": output longer than input")
          check_shape(out, pol, input)
          local rc2, out2 = norm(out, pol)
          assert.equal(SAME, rc2, "not idempotent: " .. show(input) .. " -> " .. show(out) .. " -> " .. tostring(out2))
          assert.equal(out, out2)
        end
      end
    end
    -- the generator must exercise both outcomes enough for the checks to mean something
    assert.is_true(accepted > 4000, "only " .. accepted .. " accepted")
    assert.is_true(changed > 2000, "only " .. changed .. " changed")
  end)

  -- Every spelling of a normal path converges on it: encode unreserved characters in either case,
  -- add "./" segments, "x/../" detours and doubled slashes, and normalise back.
  it("maps every spelling of a normal path back to it (seed " .. seed .. ")", function()
    local SEG = { "a", "admin", "v1", "b.c", "x~y", "q_r-s", "%C3%A9", "%20", "a;p=1" }
    local function respell(path)
      local out = {}
      for seg in path:gmatch("/([^/]*)") do
        if rng(4) == 1 then out[#out + 1] = "." end
        if rng(5) == 1 then out[#out + 1] = "zz"; out[#out + 1] = rng(2) == 1 and ".." or "%2E%2e" end
        if rng(5) == 1 then out[#out + 1] = "" end -- a doubled slash
        -- encode unreserved characters (outside %XX) at random, in random case
        local s, i = {}, 1
        while i <= #seg do
          local c = seg:sub(i, i)
          if c == "%" then
            local hex = seg:sub(i + 1, i + 2)
            s[#s + 1] = "%" .. (rng(2) == 1 and hex:lower() or hex)
            i = i + 3
          else
            if c:find("[%w%-%._~]") and rng(3) == 1 then
              local e = ("%%%02X"):format(c:byte())
              c = rng(2) == 1 and e:lower() or e
            end
            s[#s + 1] = c
            i = i + 1
          end
        end
        out[#out + 1] = table.concat(s)
      end
      return "/" .. table.concat(out, "/")
    end
    for _ = 1, 3000 do
      local segs = {}
      for i = 1, rng(1, 5) do segs[i] = SEG[rng(#SEG)] end
      for i = 1, #segs - 1 do segs[i] = segs[i]:gsub(";.*", "") end -- parameters only on the last
      local normal = "/" .. table.concat(segs, "/")
      assert.equal(SAME, (norm(normal)), show(normal) .. " should already be normal")
      local spelled = respell(normal)
      local rc, out, reason = norm(spelled)
      assert.is_true(rc ~= REFUSED, show(spelled) .. " refused: " .. tostring(reason))
      assert.equal(normal, out, show(spelled))
    end
  end)
end)

describe("host normalisation", function()
  it("lowercases, drops one trailing dot and splits the port", function()
    local cases = {
      { "example.com", "example.com", -1 }, { "Example.COM.", "example.com", -1 },
      { "Example.COM.:8080", "example.com", 8080 }, { "example.com:", "example.com", -1 },
      { "EXAMPLE.com:443", "example.com", 443 }, { "a:0", "a", 0 }, { "a:65535", "a", 65535 },
      { "a:00080", "a", 80 }, { "[::1]", "[::1]", -1 }, { "[::1]:8080", "[::1]", 8080 },
      { "[2001:DB8::1]", "[2001:db8::1]", -1 }, { "[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.1]", 80 },
      { "127.0.0.1:80", "127.0.0.1", 80 }, { "a_b.Example", "a_b.example", -1 },
      { "xn--caf-dma.example", "xn--caf-dma.example", -1 }, { "localhost", "localhost", -1 },
      { ("a"):rep(63) .. ".com", ("a"):rep(63) .. ".com", -1 },
      { (("a"):rep(49) .. "."):rep(5) .. "abc", (("a"):rep(49) .. "."):rep(5) .. "abc", -1 }, -- 253 bytes
    }
    for _, c in ipairs(cases) do
      local name, p = host(c[1])
      assert.equal(c[2], name, show(c[1]) .. ": " .. tostring(p))
      assert.equal(c[3], p, show(c[1]))
    end
  end)

  it("refuses empty names and labels, invalid bytes, bad literals and ports", function()
    local cases = {
      { "", "empty host" }, { ":80", "empty host" }, { ".", "empty host" }, { ".:80", "empty host" },
      { "a..b", "empty label" }, { ".a", "empty label" }, { "a..", "empty label" }, { "a..:80", "empty label" },
      { "a:b", "invalid port" }, { "a:123456", "invalid port" }, { "a:65536", "invalid port" },
      { "a:80:90", "invalid port" }, { "a:-1", "invalid port" }, { "a: 80", "invalid port" },
      { "a b", "invalid byte" }, { "a%2eb", "invalid byte" }, { "user@host", "invalid byte" }, { "a!b", "invalid byte" },
      { "a~b", "invalid byte" }, { "caf\xc3\xa9.com", "invalid byte" }, { "a\0b", "invalid byte" },
      { "a/b", "invalid byte" }, { "a\\b", "invalid byte" }, { "a]", "invalid byte" },
      { "[::1", "unterminated" }, { "[]", "IPv6" }, { "[::1]x", "after IPv6" }, { "[::g]", "IPv6" },
      { "[fe80::1%25eth0]", "IPv6" }, { "[1.2.3.4]", "IPv6" }, { "[:::::]", "IPv6" }, { "[v1.x]", "IPv6" },
      { ("a"):rep(64) .. ".com", "label too long" }, { (("a"):rep(49) .. "."):rep(5) .. "abcd", "too long" },
    }
    for _, c in ipairs(cases) do
      local name, reason = host(c[1])
      assert.is_nil(name, show(c[1]) .. " should be refused")
      assert.is_truthy(reason:find(c[2], 1, true), show(c[1]) .. ": " .. show(reason))
    end
  end)
end)

describe("route prefix, exact and strip_prefix semantics", function()
  local function pm(prefix, path) return lib.mr_path_test_prefix_match(prefix, #prefix, path, #path) == 1 end
  local function em(exact, path) return lib.mr_path_test_exact_match(exact, #exact, path, #path) == 1 end
  local function strip(prefix, path)
    local n = lib.mr_path_test_strip_prefix(prefix, #prefix, path, #path, outbuf, CAP)
    if n < 0 then return nil end
    return ffi.string(outbuf, n)
  end

  it("matches a prefix at segment boundaries, with or without its trailing slash", function()
    local cases = {
      { "/api", "/api", true }, { "/api", "/api/", true }, { "/api", "/api/x", true }, { "/api", "/apix", false },
      { "/api", "/ap", false }, { "/api", "/api;v=1", true }, { "/api", "/api;v=1/x", true },
      { "/api/", "/api", true }, { "/api/", "/api/", true }, { "/api/", "/api/x", true }, { "/api/", "/apix", false },
      { "/api/", "/api;v=1", true }, { "/", "/anything", true }, { "/", "/", true }, { "/api", "/API", false },
      { "/a/b", "/a/b/c", true }, { "/a/b", "/a/bc", false }, { "/a/b", "/a", false }, { "/a/b/", "/a/b", true },
      { "api", "/api", false }, { "", "/", false }, { "/api", "", false }, { "/", "*", false }, { "/api", "*", false },
      { "/api", "/api.json", false }, { "/api", "/api-v2", false }, { "/api", "/api%2Fx", false },
    }
    for _, c in ipairs(cases) do
      assert.equal(c[3], pm(c[1], c[2]), show(c[1]) .. " on " .. show(c[2]))
    end
  end)

  it("matches an exact path, ignoring parameters of its last segment", function()
    local cases = {
      { "/login", "/login", true }, { "/login", "/login;jsessionid=1", true }, { "/login", "/login;a;b", true },
      { "/login", "/login/", false }, { "/login", "/loginx", false }, { "/login", "/login;x/y", false },
      { "/login", "/logi", false }, { "/a;x", "/a;x", true }, { "/a;x", "/a;x;y", false }, { "/a;x", "/a", false },
      { "/a/", "/a/;x", true }, { "/a", "/a/;x", false }, { "/", "/;x", true }, { "/", "/", true },
    }
    for _, c in ipairs(cases) do
      assert.equal(c[3], em(c[1], c[2]), show(c[1]) .. " on " .. show(c[2]))
    end
  end)

  it("strips a prefix so the remainder always starts with '/'", function()
    local cases = {
      { "/api", "/api", "/" }, { "/api", "/api/", "/" }, { "/api", "/api/x", "/x" }, { "/api/", "/api/x", "/x" },
      { "/api/", "/api", "/" }, { "/api", "/api;v=1", "/;v=1" }, { "/", "/x", "/x" }, { "/", "/", "/" },
      { "/a/b", "/a/b/c/d", "/c/d" }, { "/api", "/api//x", "//x" }, { "/api", "/apix", nil }, { "/api", "/", nil },
    }
    for _, c in ipairs(cases) do
      assert.equal(c[3], strip(c[1], c[2]), show(c[1]) .. " on " .. show(c[2]))
    end
  end)

  it("agrees with the Lua router's prefix and exact rules on generated paths", function()
    local router = require "moonring.router"
    local SEGS = { "a", "b", "ab", "a;x", "", "." }
    math.randomseed(7)
    local rng = math.random
    local function rp()
      local parts = {}
      for i = 1, rng(0, 4) do parts[i] = SEGS[rng(#SEGS)] end
      return "/" .. table.concat(parts, "/")
    end
    for _ = 1, 5000 do
      local a, b = rp(), rp()
      assert.equal(pm(a, b), router.prefix_match(a, b), show(a) .. " on " .. show(b))
      assert.equal(em(a, b), router.exact_match(a, b), show(a) .. " on " .. show(b))
    end
  end)
end)
