-- moonring.metrics outside a worker (no C slots: Lua tables stand in), so the same filter code
-- runs in unit specs and config checks; the integration spec (metrics_spec) covers the C side.
local metrics = require "moonring.metrics"

describe("moonring.metrics", function()
  it("counts, sets and observes per label set", function()
    local c = metrics.counter("u_hits_total", "Hits.", { "route" })
    c:inc(1, "a"); c:inc(2, "a"); c:inc(1, 5)
    assert.equal(3, c:value("a"))
    assert.equal(1, c:value("5"))
    local g = metrics.gauge("u_queue", "Queue.")
    g:set(4); g:inc(); g:dec(2)
    assert.equal(3, g:value())
    local two = metrics.counter("u_two_total", "Two.", { "a", "b" })
    two:inc(1, "x", "y")
    assert.equal(1, two:value("x", "y"))
    local h = metrics.histogram("u_seconds", "Time.", {}, { 1, 2 })
    h:observe(1.5); h:observe(5)
    local cell = h.cells[""]
    assert.same({ 0, 1, 1, 6.5 }, { cell[0], cell[1], cell[2], cell[3] })
  end)

  it("refuses bad names, labels, values and buckets", function()
    assert.has_error(function() metrics.counter("bad name", "") end)
    assert.has_error(function() metrics.counter("u_ok_total", "", { "le" }) end)
    assert.has_error(function() metrics.histogram("u_h", "", {}, { 2, 1 }) end)
    local c = metrics.counter("u_c_total", "", { "route" })
    assert.has_error(function() c:inc(1) end, "metric u_c_total takes 1 label values, got 0")
    assert.has_error(function() c:inc(-1, "a") end)
    assert.has_error(function() c:inc(1, "a\nb") end)
    assert.has_error(function() c:set(1, "a") end)
  end)
end)
