-- moonring.re (ngx.re's API) on PCRE2, through the core shared library.
local helpers = require "helpers"
local lib = helpers.core_lib_or_rerun("moonring.re")
if not lib then return end
local re = require "moonring.re"
re.use_lib(lib)

describe("moonring.re", function()
  it("matches with captures, named groups and unset groups", function()
    local m = assert(re.match("hello 1234 world", [[(\d+)\s+(?<word>\w+)(x)?]], "jo"))
    assert.equal("1234 world", m[0])
    assert.equal("1234", m[1])
    assert.equal("world", m[2])
    assert.equal("world", m.word)
    assert.is_false(m[3])
    assert.is_nil(re.match("abc", [[\d]]))
  end)

  it("honours options", function()
    assert.equal("ABC", re.match("xABC", "abc", "i")[0])
    assert.is_nil(re.match("xabc", "abc", "a"))
    assert.equal("b", re.match("a\nb", "^b", "m")[0])
    assert.equal("a\nb", re.match("a\nb", "a.b", "s")[0])
    assert.equal("ab", re.match("ab", "a b # comment", "x")[0])
    assert.equal("é", re.match("aé", "[^a]", "u")[0])
    local m, err = re.match("a", "a", "q")
    assert.is_nil(m)
    assert.matches("unknown flag", err)
    m, err = re.match("a", "a", "d")
    assert.matches("not supported", err)
  end)

  it("reports a bad pattern as nil, err", function()
    local m, err = re.match("x", "(abc", "jo")
    assert.is_nil(m)
    assert.matches("pcre2_compile%(%) failed: missing closing parenthesis", err)
  end)

  it("moves ctx.pos", function()
    local ctx = {}
    assert.equal("1", re.match("1 2 3", [[\d]], "jo", ctx)[0])
    assert.equal(2, ctx.pos)
    assert.equal("2", re.match("1 2 3", [[\d]], "jo", ctx)[0])
    assert.equal(4, ctx.pos)
  end)

  it("finds", function()
    assert.same({ 7, 10 }, { re.find("hello 1234", [[\d+]], "jo") })
    assert.same({ 3, 4 }, { re.find("ab12", [[([a-z])(\d+)]], "jo", nil, 2) })
    assert.same({}, { re.find("abc", [[\d]]) })
  end)

  it("iterates with gmatch, empty matches included", function()
    local out = {}
    for m in re.gmatch("a1b22c333", [[\d+]], "jo") do out[#out + 1] = m[0] end
    assert.same({ "1", "22", "333" }, out)
    out = {}
    local it = re.gmatch("ab", "", "jo")
    for m in it do out[#out + 1] = "[" .. m[0] .. "]" end
    assert.same({ "[]", "[]", "[]" }, out)
  end)

  it("substitutes with templates and functions", function()
    assert.same({ "hello, [world]", 1 }, { re.sub("hello, world", [[(w\w+)]], "[$1]") })
    assert.same({ "a-b-c", 2 }, { re.gsub("a b c", " ", "-", "jo") })
    assert.same({ "x${y}$", 1 }, { re.gsub("x", "(?<n>x)", "${n}$${y}$$") })
    assert.same({ "<A><B>", 2 }, { re.gsub("ab", "[a-z]", function(m) return "<" .. m[0]:upper() .. ">" end) })
    assert.same({ "-a-b-c-", 4 }, { re.gsub("abc", "", "-") })
    assert.same({ "-a-b--d-", 5 }, { re.gsub("abxd", "x*", "-") })
    assert.same({ "abc", 0 }, { re.gsub("abc", [[\d]], "-") })
    local s, n, err = re.sub("abc", "b", "$x")
    assert.is_nil(s)
    assert.matches("invalid capturing variable", err)
  end)

  it("splits", function()
    assert.same({ "a", "b", "", "c" }, re.split("a,b,,c", ","))
    assert.same({ "a", "b", "c" }, re.split("a1b22c", [[\d+]], "jo"))
    assert.same({ "a", "1", "b" }, re.split("a1b", [[(\d)]]))
    assert.same({ "a", "b,c" }, re.split("a,b,c", ",", nil, nil, 2))
    assert.same({ "a", "b", "c" }, re.split("abc", ""))
  end)

  it("keeps compiled regexes with o, bounded", function()
    local old = re.cache_max
    re.cache_max = 4
    for i = 1, 20 do assert.equal(tostring(i), re.match("x" .. i, tostring(i), "jo")[0]) end
    re.cache_max = old
  end)
end)
