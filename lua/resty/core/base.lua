-- resty.core.base for OpenResty code on moonring: the helpers lua-resty-* libraries take from it
-- (version, new_tab, clear_tab, the FFI_* codes, string buffers, get_request).
local ffi = require "ffi"
local moonring = require "moonring"

local ok, new_tab = pcall(require, "table.new")
if not ok then new_tab = function() return {} end end
local ok2, clear_tab = pcall(require, "table.clear")
if not ok2 then clear_tab = function(t) for k in pairs(t) do t[k] = nil end end end

local M = new_tab(0, 24)
M.version = "0.1.25"
M.new_tab = new_tab
M.clear_tab = clear_tab
M.FFI_OK, M.FFI_NO_REQ_CTX, M.FFI_BAD_CONTEXT, M.FFI_ERROR, M.FFI_AGAIN, M.FFI_BUSY, M.FFI_DONE, M.FFI_DECLINED =
  0, -100, -101, -1, -2, -3, -4, -5

local str_buf_size = 4096
local str_buf, size_ptr, errmsg
function M.set_string_buf_size(n) if n > 0 then str_buf_size = n; str_buf = nil end end
function M.get_string_buf_size() return str_buf_size end
function M.get_string_buf(size, must_alloc)
  if size > str_buf_size or must_alloc then return ffi.new("unsigned char[?]", size) end
  if not str_buf then str_buf = ffi.new("unsigned char[?]", str_buf_size) end
  return str_buf
end
function M.get_size_ptr()
  if not size_ptr then size_ptr = ffi.new("size_t[1]") end
  return size_ptr
end
function M.get_errmsg_ptr()
  if not errmsg then errmsg = ffi.new("char *[1]") end
  return errmsg
end

-- A truthy value inside a request (the request's pointer), else nil.
function M.get_request()
  local o = moonring._cur
  return o and o.req and o.req._r or nil
end

function M.ref_in_table(tb, key)
  local n = #tb + 1
  tb[n] = key
  return n
end

function M.allows_subsystem(...)
  for i = 1, select("#", ...) do if select(i, ...) == "http" then return true end end
  return false
end

M.c_buf_type = ffi.typeof("char[?]")
M.subsystem = "http"
return M
