-- ngx.process for OpenResty code on moonring: every Lua VM is a worker's.
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
return {
  version = "0.1.25",
  type = function() return "worker" end,
  get_master_pid = function() return ffi.C.getpid() end,
  enable_privileged_agent = function() return nil, "not supported by moonring" end,
  signal_graceful_exit = function() return nil, "not supported by moonring" end,
}
