-- moonring.metrics: counters, gauges and histograms defined by Lua code, exposed with the
-- built-in ones on the admin endpoint (GET /metrics).
--
--   local metrics = require "moonring.metrics"
--   local hits = metrics.counter("myapp_hits_total", "Hits by route.", { "route" })
--   local lat = metrics.histogram("myapp_work_seconds", "Work time.", { "route" }, { 0.01, 0.1, 1 })
--   hits:inc(1, "api")                 -- label values in the order the labels were declared
--   lat:observe(0.03, "api")
--   local q = metrics.gauge("myapp_queue", "Items queued.")
--   q:set(12); q:inc(); q:dec(2)
--
-- Define metrics when a module or the config loads (each worker's VM runs that code, and every
-- definition of the same name must be the same). The hot path is plain Lua: each worker keeps its
-- own slots in C memory (src/metrics/metrics.h) found once per label set and then updated through
-- an FFI pointer, which the JIT compiles to a load, an add and a store. The admin thread sums the
-- workers' slots at scrape time; gauges are summed over workers too.
local ffi = require "ffi"
local base = require "moonring.base"

ffi.cdef [[
int mr_metrics_user_define(const char *name, size_t nl, int type, const char *help, size_t hl,
                           const char *labels, size_t ll, const double *bounds, int nbounds);
double *mr_metrics_user_slots(int id, const char *values, size_t vl);
]]

local C = ffi.C
local has_c = pcall(function() return C.mr_metrics_user_slots end)
local concat, type, tostring, select, error = table.concat, type, tostring, select, error

local M = {}
local COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
M.DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

local Metric = {}
Metric.__index = Metric

-- The slots of one label set: C memory on a worker, a Lua table elsewhere (the scratch VM of a
-- config check, unit specs), so the same code runs everywhere.
local function slots(self, key, n, ...)
  if n ~= self.nlabels then
    error(("metric %s takes %d label values, got %d"):format(self.name, self.nlabels, n), 3)
  end
  for i = 1, n do
    local v = select(i, ...)
    if type(v) ~= "string" and type(v) ~= "number" then
      error(("metric %s: label %s: expected a string or a number, got %s"):format(self.name, self.labels[i], type(v)), 3)
    end
    if tostring(v):find("\n", 1, true) then
      error(("metric %s: label %s: a value must not contain a newline"):format(self.name, self.labels[i]), 3)
    end
  end
  local cell = self.id > 0 and has_c and C.mr_metrics_user_slots(self.id, key, #key) or nil
  if cell == nil then
    cell = {}
    for i = 0, self.nslots - 1 do cell[i] = 0 end
  end
  self.cells[key] = cell
  return cell
end

local function key_of(n, a, ...)
  if n == 0 then return "" end
  if n == 1 then return tostring(a) end
  local t = { tostring(a), ... }
  for i = 2, n do t[i] = tostring(t[i]) end
  return concat(t, "\n", 1, n)
end

local function cell_for(self, ...)
  local n = select("#", ...)
  while n > 0 and select(n, ...) == nil do n = n - 1 end -- inc(1) reaches here as inc(1, nil, nil)
  local key = key_of(n, ...)
  return self.cells[key] or slots(self, key, n, ...)
end

-- The common cases, no label or one string label, find their slot with one table lookup and no
-- vararg handling; the rest goes through cell_for.
local function fast(self, a, b)
  local nl = self.nlabels
  if nl == 0 then return a == nil and self.cells[""] or nil end
  if nl == 1 and b == nil and type(a) == "string" then return self.cells[a] end
  return nil
end

function Metric:inc(v, a, b, ...)
  v = v or 1
  if self.type == COUNTER and not (v >= 0) then error("counter " .. self.name .. ": inc takes a value >= 0", 2) end
  if self.type == HISTOGRAM then error("histogram " .. self.name .. ": use observe", 2) end
  local c = fast(self, a, b) or cell_for(self, a, b, ...)
  c[0] = c[0] + v
end

function Metric:dec(v, ...)
  if self.type ~= GAUGE then error(self.name .. ": only gauges go down", 2) end
  local c = cell_for(self, ...)
  c[0] = c[0] - (v or 1)
end

function Metric:set(v, ...)
  if self.type ~= GAUGE then error(self.name .. ": only gauges can be set", 2) end
  if type(v) ~= "number" then error("gauge " .. self.name .. ": set takes a number", 2) end
  local c = cell_for(self, ...)
  c[0] = v
end

function Metric:observe(v, a, b, ...)
  if self.type ~= HISTOGRAM then error(self.name .. ": observe is for histograms", 2) end
  if type(v) ~= "number" then error("histogram " .. self.name .. ": observe takes a number", 2) end
  local c = fast(self, a, b) or cell_for(self, a, b, ...)
  local b, bounds, nb = 0, self.bounds, self.nbounds
  while b < nb and v > bounds[b + 1] do b = b + 1 end
  c[b] = c[b] + 1
  c[nb + 1] = c[nb + 1] + v
end

-- The current value of this worker's slot (counter, gauge), for tests and filters that read back.
function Metric:value(...)
  local c = cell_for(self, ...)
  return tonumber(c[0])
end

local function define(kind, name, help, labels, buckets, level)
  if type(name) ~= "string" or not name:match("^[%a_:][%w_:]*$") then
    error("metric name must match [a-zA-Z_:][a-zA-Z0-9_:]*, got " .. tostring(name), level)
  end
  help = help or ""
  if type(help) ~= "string" then error("metric " .. name .. ": help must be a string", level) end
  labels = labels or {}
  if type(labels) ~= "table" then error("metric " .. name .. ": labels must be a list of names", level) end
  for _, l in ipairs(labels) do
    if type(l) ~= "string" or not l:match("^[%a_][%w_]*$") or l == "le" or l:sub(1, 2) == "__" then
      error("metric " .. name .. ": bad label name " .. tostring(l), level)
    end
  end
  local bounds = {}
  if kind == HISTOGRAM then
    buckets = buckets or M.DEFAULT_BUCKETS
    for i, b in ipairs(buckets) do
      if type(b) ~= "number" or (i > 1 and b <= buckets[i - 1]) then
        error("histogram " .. name .. ": buckets must be ascending numbers", level)
      end
      bounds[i] = b
    end
  end
  local lab = concat(labels, "\n")
  local id = 0
  if has_c then
    local cb = #bounds > 0 and ffi.new("double[?]", #bounds, bounds) or nil
    id = C.mr_metrics_user_define(name, #name, kind, help, #help, lab, #lab, cb, #bounds)
    if id == base.EXISTS then
      error("metric " .. name .. " is defined already with another type, help, labels or buckets " ..
            "(or is a built-in moonring_ family)", level)
    elseif id < 0 then
      error("metric " .. name .. ": " .. (base.errstr(id) or "cannot define it"), level)
    end
  end
  return setmetatable({ id = id, name = name, type = kind, labels = labels, nlabels = #labels, bounds = bounds,
                        nbounds = #bounds, nslots = kind == HISTOGRAM and #bounds + 2 or 1, cells = {} }, Metric)
end

function M.counter(name, help, labels) return define(COUNTER, name, help, labels, nil, 3) end
function M.gauge(name, help, labels) return define(GAUGE, name, help, labels, nil, 3) end
function M.histogram(name, help, labels, buckets) return define(HISTOGRAM, name, help, labels, buckets, 3) end

return M
