-- The config's folder is on lua_path, and the demo config is called moonring.lua: a config of
-- that name must still get moonring's own module from `require "moonring"`, while its own
-- modules next to it load too.
local helpers = require "helpers"

describe("a config file named moonring.lua", function()
  local port

  setup(function()
    local dir = helpers.tmpname("confdir")
    assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
    helpers.write_file(dir .. "/greeting.lua", 'return { text = "hello from a sibling module" }\n')
    port = helpers.free_port()
    helpers.start_moonring(([[
local moonring = require "moonring"
local greeting = require "greeting"
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  routes = {
    { path = "/", handler = function(req)
        return req:respond(200, greeting.text .. " " .. type(moonring.now()) .. "\n")
      end },
  },
}
]]):format(port), { conf_path = dir .. "/moonring.lua" })
  end)

  teardown(function() helpers.stop_all() end)

  it("requires moonring's module and its own sibling modules", function()
    local res = assert(helpers.http("GET", "http://127.0.0.1:" .. port .. "/"))
    assert.equal(200, res.status)
    assert.equal("hello from a sibling module number\n", res.body)
  end)
end)
