-- moonring.grpc (status codes, call detection, grpc-message encoding) and req:grpc_error as the
-- mock request of moonring.testing runs it; the server side is spec/integration/grpc_spec.lua.
local grpc = require "moonring.grpc"
local testing = require "moonring.testing"

describe("moonring.grpc", function()
  it("names the status codes and takes a code as a number or a name", function()
    assert.equal(16, grpc.status.UNAUTHENTICATED)
    assert.equal(14, grpc.code("UNAVAILABLE"))
    assert.equal(4, grpc.code("deadline_exceeded"))
    assert.equal(0, grpc.code(0))
    assert.is_nil(grpc.code(17))
    assert.is_nil(grpc.code(1.5))
    assert.is_nil(grpc.code("NOPE"))
  end)

  it("tells gRPC calls by their content-type", function()
    assert.is_true(grpc.is_grpc(testing.request({ headers = { ["content-type"] = "application/grpc" } })))
    assert.is_true(grpc.is_grpc(testing.request({ headers = { ["content-type"] = "application/grpc+proto" } })))
    assert.is_false(grpc.is_grpc(testing.request({ headers = { ["content-type"] = "application/grpc-web" } })))
    assert.is_false(grpc.is_grpc(testing.request({})))
  end)

  it("percent-encodes grpc-message as gRPC wants", function()
    assert.equal("plain text", grpc.encode_message("plain text"))
    assert.equal("100%25 %C3%BC%0A", grpc.encode_message("100% ü\n"))
  end)

  it("answers with a Trailers-Only response through req:grpc_error", function()
    local req = testing.request({ headers = { ["content-type"] = "application/grpc" } })
    assert.is_true(req:grpc_error("PERMISSION_DENIED", "no"))
    assert.same({ status = 200, body = "", headers = { ["content-type"] = "application/grpc",
      ["grpc-status"] = "7", ["grpc-message"] = "no" } }, req.response)
    assert.has_error(function() testing.request({}):grpc_error(99) end,
      "req:grpc_error(code, message): code must be 0-16 or a status name, got 99")
  end)
end)
