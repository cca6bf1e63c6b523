-- ngx.errlog for OpenResty code on moonring: raw_log and get_sys_filter_level.
return {
  version = "0.1.25",
  raw_log = function(level, msg) ngx.log(level, msg) end,
  get_sys_filter_level = function() return ngx.DEBUG end,
  set_filter_level = function() return nil, "not supported by moonring" end,
  get_logs = function() return nil, "not supported by moonring" end,
}
