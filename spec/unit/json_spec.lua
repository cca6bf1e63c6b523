-- moonring.json over Debian's lua-cjson: round trips, null, empty arrays, errors as nil, err.
local json = require "moonring.json"
local cjson = require "cjson"

describe("moonring.json", function()
  it("encodes and decodes", function()
    local s = assert(json.encode({ a = 1, b = { 1, 2, 3 }, c = "x\"y", d = true }))
    local v = assert(json.decode(s))
    assert.same({ a = 1, b = { 1, 2, 3 }, c = "x\"y", d = true }, v)
    assert.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
    assert.equal('"\\u0000a\\n"', json.encode("\0a\n"))
  end)

  it("has null, the same value as cjson.null", function()
    assert.equal(cjson.null, json.null)
    assert.equal("[null,1]", json.encode({ json.null, 1 }))
    assert.equal(json.null, json.decode("[null]")[1])
    assert.equal(json.null, json.decode("null"))
  end)

  it("writes empty tables as objects, and marked ones as arrays", function()
    assert.equal("{}", json.encode({}))
    assert.equal("[]", json.encode(json.empty_array))
    assert.equal("[]", json.encode(setmetatable({}, json.array_mt)))
    assert.equal("[]", json.encode(json.array()))
    local s = json.encode({ list = json.empty_array, obj = {}, nested = { l = { json.array() } } })
    assert.matches('"list":[]', s, 1, true)
    assert.matches('"obj":{}', s, 1, true)
    assert.matches('"nested":{"l":[[]]}', s, 1, true)
    local t = { list = json.empty_array }
    json.encode(t)
    assert.equal(json.empty_array, t.list) -- the caller's table is not changed
    assert.equal("[1,2]", json.encode(setmetatable({ 1, 2 }, json.array_mt)))
  end)

  it("returns nil, err instead of raising", function()
    local v, err = json.decode("[1,")
    assert.is_nil(v)
    assert.is_string(err)
    v, err = json.decode(42)
    assert.is_nil(v)
    assert.matches("expected a string", err)
    v, err = json.encode({ f = function() end })
    assert.is_nil(v)
    assert.matches("function", err)
    local cyc = {}
    cyc.self = cyc
    v, err = json.encode(cyc)
    assert.is_nil(v)
  end)

  it("is not changed by settings made on the global cjson", function()
    cjson.encode_number_precision(3)
    assert.equal("[3.14159]", json.encode({ 3.14159 }))
    cjson.encode_number_precision(14)
  end)
end)
