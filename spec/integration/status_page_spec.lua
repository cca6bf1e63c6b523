-- The built-in status page (GET /-/ on the admin listener), in a real browser: headless Chromium
-- from Debian loads it, its script polls /-/stats, and the spec checks both the rendered DOM
-- (routes, upstreams, server states, rates) and a screenshot (size, colours of the state badges).
local helpers = require "helpers"
local json = require "dkjson"

local CHROMIUM_FLAGS = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
  .. "--disable-background-networking --disable-component-update --disable-sync --hide-scrollbars"

local function chromium() return (helpers.run("command -v chromium 2>/dev/null"):gsub("%s+$", "")) end

describe("the status page", function()
  teardown(function() helpers.stop_all() end)

  it("shows routes, upstreams and server states live in headless Chromium", function()
    local bin = chromium()
    if bin == "" then
      pending("chromium is not installed (scripts/deps installs it)")
      return
    end
    local origin, o2 = helpers.start_origin(), helpers.start_origin()
    local port, admin = helpers.free_port(), helpers.free_port()
    helpers.start_moonring(([[
return { workers = 1, listen = { "127.0.0.1:%d" }, admin = { listen = "127.0.0.1:%d" },
  upstreams = { backend = { servers = { "127.0.0.1:%d", "127.0.0.1:%d" } } },
  routes = { { name = "api", path = "/api/", upstream = "backend", strip_prefix = true },
             { name = "health", exact = "/health", handler = function() return 200, "ok" end } } }
]]):format(port, admin, origin.port, o2.port))
    assert.truthy(helpers.eventually(function() return helpers.port_open(admin) end, 5))
    local drained = ("127.0.0.1:%d"):format(o2.port)
    assert.equal(200, helpers.http("POST", ("http://127.0.0.1:%d/-/upstreams/backend/servers/%s?state=draining")
      :format(admin, drained), { body = "" }).status)
    -- Traffic while the page polls, so its rates are not zero: wrk for a few seconds.
    local wrk = helpers.spawn(("timeout 30 wrk -t1 -c2 -d15s http://127.0.0.1:%d/api/size/100"):format(port),
      helpers.tmpname("wrk", ".log"))
    helpers.sleep(1)
    local page = ("http://127.0.0.1:%d/-/"):format(admin)
    local profile = helpers.tmpname("chromium", "")
    -- The DOM after the script ran: virtual time lets it poll several times.
    local dom, rc = helpers.run(("timeout 60 %s %s --user-data-dir=%s --virtual-time-budget=4000 --dump-dom %s 2>/dev/null")
      :format(bin, CHROMIUM_FLAGS, profile, page))
    assert.equal(0, rc, dom)
    assert.matches("<h1>moonring</h1>", dom, 1, true)
    assert.truthy(dom:find("generation 1", 1, true), dom)
    assert.truthy(dom:find("<td>api</td>", 1, true), dom)
    assert.truthy(dom:find("<td>backend</td>", 1, true), dom)
    assert.truthy(dom:find('<span class="st draining">draining</span>', 1, true), dom)
    assert.truthy(dom:find('<span class="st up">up</span>', 1, true), dom)
    assert.truthy(dom:find(drained, 1, true), dom)
    -- the api row: a request rate above zero (req/s is the second cell)
    local rate = tonumber(dom:match("<tr><td>api</td><td>([%d.]+)</td>"))
    assert.truthy(rate and rate > 0, dom)
    -- A screenshot, checked: its size, more than a handful of colours, and the badges' colours
    -- (up: #2e8b57, draining: #d68910) and the header's (#1d2330) present.
    local shot = helpers.tmpname("status", ".png")
    local out
    out, rc = helpers.run(("timeout 60 %s %s --user-data-dir=%s --window-size=1200,700 --virtual-time-budget=3000 "
      .. "--screenshot=%s %s 2>&1"):format(bin, CHROMIUM_FLAGS, profile, shot, page))
    assert.equal(0, rc, out)
    out, rc = helpers.run(("python3 %s/fixtures/png_colors.py %s 2e8b57 d68910 1d2330"):format(helpers.spec_dir, shot))
    assert.equal(0, rc, out)
    local info = assert(json.decode(out), out)
    assert.equal(1200, info.width)
    assert.equal(700, info.height)
    assert.truthy(info.colours > 20, out)
    assert.truthy(info.counts["2e8b57"] > 100, out)
    assert.truthy(info.counts["d68910"] > 100, out)
    assert.truthy(info.counts["1d2330"] > 1200 * 20, out)
    wrk.stop()
  end)
end)
