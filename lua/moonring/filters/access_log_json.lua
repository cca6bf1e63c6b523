-- access_log_json: one JSON line per request, written when the response is done.
--
--   { "moonring.filters.access_log_json", { fields = { env = "prod", ua = function(req) return req:header("user-agent") end } } }
--
-- Line (keys in this order, null when unknown):
--   {"time":"2024-01-02T03:04:05.678Z","remote_addr":…,"method":…,"host":…,"path":…,
--    "query":…,"status":…,"bytes":…,"duration":…,"request_id":…,"upstream":…,"user":…,
--    "upstream_addr":…,"upstream_status":…,"upstream_connect_time":…,"upstream_response_time":…, <fields>}
-- time is when the request reached this filter, duration is in seconds, path and query are
-- as received (before any rewrite by later filters). Put this filter FIRST in the chain so
-- that its on_request sees every request. bytes counts the response body through on_body;
-- `count_body = false` skips body filtering and uses Content-Length instead. request_id
-- comes from ctx.request_id (see request_id), user from ctx.user (see basic_auth), upstream
-- from ctx.upstream or what req:set_upstream() recorded. `fields` adds keys (sorted), each a
-- value or a function(req, res, ctx). The upstream_* fields are the last try's (null when the
-- request never reached an upstream), times in seconds. Lines go to `writer(line)` if given, else
-- to the access log (access_log must be set: the line takes the place of the configured
-- format's), else, with no access log open, to the error log at info level.
local util = require "moonring.filters._util"

local NAME = "moonring.filters.access_log_json"
local concat, sort = table.concat, table.sort
local floor, format = math.floor, string.format
local json_string, json_number, json_encode = util.json_string, util.json_number, util.json_encode

local function str(v)
  if v == nil then return "null" end
  return json_string(tostring(v))
end

local function num(v)
  v = tonumber(v)
  if v == nil then return "null" end
  return json_number(v)
end

local last_sec, last_prefix = nil, nil
local function iso8601(t)
  local sec = floor(t)
  if sec ~= last_sec then
    last_sec, last_prefix = sec, os.date("!%Y-%m-%dT%H:%M:%S", sec)
  end
  return format('"%s.%03dZ"', last_prefix, floor((t - sec) * 1000))
end

local buf = {}

return function(opts)
  opts = util.options(NAME, opts, { "writer", "fields", "count_body" })
  local writer = util.check_type(NAME, "writer", opts.writer, "function", true)
  local count_body = util.check_type(NAME, "count_body", opts.count_body, "boolean", true)
  if count_body == nil then count_body = true end
  local extra_names, extra = {}, {}
  if opts.fields ~= nil then
    if type(opts.fields) ~= "table" then util.fail(NAME, "fields", "must be a map of name to value or function") end
    for k, v in pairs(opts.fields) do
      if type(k) ~= "string" then util.fail(NAME, "fields", "keys must be strings") end
      local t = type(v)
      if t ~= "function" then
        local ok, err = pcall(json_encode, v)
        if not ok then util.fail(NAME, "fields." .. k, "cannot be encoded as JSON: " .. err) end
      end
      extra_names[#extra_names + 1] = k
    end
    sort(extra_names)
    for i, k in ipairs(extra_names) do
      local v = opts.fields[k]
      extra[i] = type(v) == "function" and v or json_encode(v) -- constants encoded once
      extra_names[i] = "," .. json_string(k) .. ":"
    end
  end
  local nextra = #extra_names

  local filter = {}

  function filter.on_request(req, ctx)
    ctx.access_log_start = util.now()
    ctx.access_log_path = req.path
    ctx.access_log_query = req.query
    ctx.access_log_bytes = 0
  end

  if count_body then
    function filter.on_body(_, chunk, _, ctx)
      if chunk then ctx.access_log_bytes = (ctx.access_log_bytes or 0) + #chunk end
      return chunk
    end
  end

  function filter.on_log(req, res, ctx)
    local start = ctx.access_log_start
    local now = util.now()
    local query = ctx.access_log_query or req.query
    local bytes
    if count_body then bytes = ctx.access_log_bytes else bytes = res and res:header("content-length") end
    buf[1] = '{"time":'; buf[2] = iso8601(start or now)
    buf[3] = ',"remote_addr":'; buf[4] = str(req.remote_addr)
    buf[5] = ',"method":'; buf[6] = str(req.method)
    buf[7] = ',"host":'; buf[8] = str(req.host)
    buf[9] = ',"path":'; buf[10] = str(ctx.access_log_path or req.path)
    buf[11] = ',"query":'; buf[12] = (query and query ~= "") and str(query) or "null"
    buf[13] = ',"status":'; buf[14] = num(res and res.status)
    buf[15] = ',"bytes":'; buf[16] = num(bytes)
    buf[17] = ',"duration":'; buf[18] = start and json_number(floor((now - start) * 1e6 + 0.5) / 1e6) or "null"
    buf[19] = ',"request_id":'; buf[20] = str(ctx.request_id)
    buf[21] = ',"upstream":'; buf[22] = str(ctx.upstream or req.upstream)
    buf[23] = ',"user":'; buf[24] = str(ctx.user)
    local up = req.upstream_info and req:upstream_info()
    buf[25] = ',"upstream_addr":'; buf[26] = str(up and up.addr)
    buf[27] = ',"upstream_status":'; buf[28] = num(up and up.status)
    buf[29] = ',"upstream_connect_time":'; buf[30] = num(up and up.connect_time)
    buf[31] = ',"upstream_response_time":'; buf[32] = num(up and up.response_time)
    local n = 32
    for i = 1, nextra do
      local v = extra[i]
      if type(v) == "function" then
        local ok, r = pcall(v, req, res, ctx)
        ok, v = pcall(json_encode, ok and r or nil)
        if not ok then v = "null" end
      end
      buf[n + 1] = extra_names[i]; buf[n + 2] = v
      n = n + 2
    end
    buf[n + 1] = "}"
    local line = concat(buf, "", 1, n + 1)
    if writer then writer(line)
    elseif not (req.log_line and req:log_line(line)) then util.log("info", line) end
  end

  return filter
end
