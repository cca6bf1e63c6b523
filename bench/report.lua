-- bench/report.lua RESULTS_DIR — turns what bench/run recorded into tables, CSV and plots.
--
-- Reads   RESULTS_DIR/raw.csv     one row per wrk run (every round)
--         RESULTS_DIR/status.csv  per variant: ok / skipped / unsupported / failed / crashed
--         RESULTS_DIR/meta.txt    key=value: machine, versions, run parameters
-- Writes  RESULTS_DIR/results.csv medians over rounds + ratios to nginx, one row per point
--         RESULTS_DIR/summary.md  machine + tables (for the README's Performance section)
--         RESULTS_DIR/*.png       gnuplot plots (and the .dat/.gp files that made them); the close
--                                 point (a new connection per request) as ratios to nginx
-- Prints  the markdown tables on stdout.

local dir = assert(arg[1], "usage: luajit report.lua RESULTS_DIR")

---------------------------------------------------------------------------------------------
-- Input

local function lines(path)
  local f = io.open(path, "r")
  if not f then return function() return nil end end
  local it = f:lines()
  return function()
    local l = it()
    if not l then f:close() end
    return l
  end
end

local function split_csv(line) -- no embedded commas in our files, quotes only around text
  local out = {}
  for field in (line .. ","):gmatch("([^,]*),") do out[#out + 1] = field:gsub('^"(.*)"$', "%1") end
  return out
end

local function read_csv(path)
  local rows, header = {}, nil
  for l in lines(path) do
    if l ~= "" then
      local f = split_csv(l)
      if not header then header = f
      else
        local row = {}
        for i, k in ipairs(header) do row[k] = tonumber(f[i]) or f[i] end
        rows[#rows + 1] = row
      end
    end
  end
  return rows
end

local meta = {}
for l in lines(dir .. "/meta.txt") do
  local k, v = l:match("^([%w_]+)=(.*)$")
  if k then meta[k] = v end
end

local statuses = read_csv(dir .. "/status.csv")
local proxies, status = {}, {} -- run order
for _, s in ipairs(statuses) do
  proxies[#proxies + 1] = s.proxy
  status[s.proxy] = s
end

---------------------------------------------------------------------------------------------
-- Aggregation: median over rounds of each figure, errors summed over rounds.

local function median(t)
  if #t == 0 then return nil end
  table.sort(t)
  local n = #t
  if n % 2 == 1 then return t[(n + 1) / 2] end
  return (t[n / 2] + t[n / 2 + 1]) / 2
end

local points = {}  -- key "sweep|conns|body" -> { sweep, conns, body, by = { proxy -> samples } }
local order = {}   -- point keys, in the order they were first run
for _, r in ipairs(read_csv(dir .. "/raw.csv")) do
  local key = r.sweep .. "|" .. r.conns .. "|" .. r.body
  local p = points[key]
  if not p then
    p = { sweep = r.sweep, conns = r.conns, body = r.body, by = {} }
    points[key] = p
    order[#order + 1] = key
  end
  local s = p.by[r.proxy]
  if not s then
    s = { rps = {}, p50 = {}, p99 = {}, p999 = {}, cpu = {}, rss = {}, errors = 0, rounds = 0, requests = 0 }
    p.by[r.proxy] = s
  end
  s.rounds = s.rounds + 1
  s.requests = s.requests + r.requests
  s.errors = s.errors + r.err_connect + r.err_read + r.err_write + r.err_timeout + r.err_status
  if r.requests > 0 and r.duration_us > 0 then
    table.insert(s.rps, r.requests / (r.duration_us / 1e6))
    table.insert(s.p50, r.p50_us)
    table.insert(s.p99, r.p99_us)
    table.insert(s.p999, r.p999_us)
    table.insert(s.cpu, r.cpu_ns / 1000 / r.requests)
  end
  table.insert(s.rss, r.rss_kb)
end

local FIGS = { "rps", "p50", "p99", "p999", "cpu", "rss" }
for _, key in ipairs(order) do
  for _, s in pairs(points[key].by) do
    if #s.rps > 0 then -- spread of req/s over rounds, to judge the noise
      s.rps_min, s.rps_max = math.min(unpack(s.rps)), math.max(unpack(s.rps))
    end
    for _, f in ipairs(FIGS) do s[f] = median(s[f]) end
  end
end

local function ratio(p, proxy, fig)
  local s, ref = p.by[proxy], p.by.nginx
  if not (s and ref and s[fig] and ref[fig] and ref[fig] > 0) then return nil end
  return s[fig] / ref[fig]
end

---------------------------------------------------------------------------------------------
-- Formatting

local function thousands(n)
  local s = string.format("%.0f", n)
  local out = s:reverse():gsub("(%d%d%d)", "%1,"):reverse()
  return (out:gsub("^,", ""))
end

local function ms(us)
  local v = us / 1000
  if v < 1 then return string.format("%.3f", v) end
  if v < 10 then return string.format("%.2f", v) end
  return string.format("%.1f", v)
end

local function size(b)
  if b >= 1048576 then return string.format("%g MiB", b / 1048576) end
  if b >= 1024 then return string.format("%g KiB", b / 1024) end
  return b .. " B"
end

local fmt = {
  rps = thousands,
  p50 = ms, p99 = ms, p999 = ms,
  cpu = function(v) return string.format("%.2f", v) end,
  rss = function(v) return string.format("%.1f", v / 1024) end,
}

local function cell(p, proxy, fig)
  local s = p.by[proxy]
  if not (s and s[fig]) then return "–" end
  local text = fmt[fig](s[fig])
  local r = proxy ~= "nginx" and ratio(p, proxy, fig)
  if r then text = text .. string.format(" (%.2f×)", r) end
  return text
end

local function table_for(sweep)
  local out = {}
  local function add(l) out[#out + 1] = l end
  add("| conns | body | variant | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | RSS MiB | errors |")
  add("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
  for _, key in ipairs(order) do
    local p = points[key]
    if p.sweep == sweep then
      for _, proxy in ipairs(proxies) do
        if p.by[proxy] then
          add(string.format("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %d |", p.conns, size(p.body), proxy,
            cell(p, proxy, "rps"), cell(p, proxy, "p50"), cell(p, proxy, "p99"), cell(p, proxy, "p999"),
            cell(p, proxy, "cpu"), cell(p, proxy, "rss"), p.by[proxy].errors))
        end
      end
    end
  end
  for _, proxy in ipairs(proxies) do
    local st = status[proxy].status
    if st ~= "ok" and st ~= "crashed" then
      add(string.format("| | | %s | %s | | | | | | |", proxy, st))
    end
  end
  return table.concat(out, "\n")
end

local notes = {}
for _, proxy in ipairs(proxies) do
  local s = status[proxy]
  if s.status ~= "ok" then
    notes[#notes + 1] = string.format("- **%s**: %s — %s", proxy, s.status, s.reason ~= "" and s.reason or "no detail")
  end
end

if tonumber(meta.foreign_cpu_pct or 0) >= 5 then
  notes[#notes + 1] = string.format("- **the machine was not idle**: other processes used %s CPU-seconds during " ..
    "the measurements (%s%% of one core; top: %s) — figures are skewed, run again on a quiet machine",
    meta.foreign_cpu_s, meta.foreign_cpu_pct, meta.foreign_top ~= "" and meta.foreign_top or "?")
end

-- wrk counts no error for a request that never completes, so a proxy that stalls shows up
-- only as a collapse of req/s: point those out.
for _, key in ipairs(order) do
  local p = points[key]
  for _, proxy in ipairs(proxies) do
    local r = ratio(p, proxy, "rps")
    if r and r < 0.2 then
      notes[#notes + 1] = string.format("- **%s** at %d connections, %s body: %s req/s, %.2f× nginx — requests " ..
        "probably stalled (wrk does not count requests that never complete as errors; see its log)",
        proxy, p.conns, size(p.body), thousands(p.by[proxy].rps), r)
    end
  end
end

local conc_title = string.format("Concurrency sweep (%s body)", size(tonumber(meta.conc_body) or 12))
local body_title = string.format("Body-size sweep (%s connections)", meta.body_conns or "50")
local legend = "Each cell: median over rounds; in parentheses the ratio to nginx at the same point " ..
  "(req/s: higher is better; latency, CPU and RSS: lower is better). errors = wrk socket errors + " ..
  "responses ≥ 400, summed over rounds. CPU µs/req = CPU time of all the variant's processes and " ..
  "threads during the load, divided by the requests completed."

local close_title = string.format("New connection per request (`Connection: close`, %s connections, %s body)",
  meta.close_conns or "50", size(tonumber(meta.close_body) or 12))
local sections = {}
for _, sec in ipairs({ { "conc", conc_title }, { "body", body_title }, { "close", close_title } }) do
  local ran = false
  for _, key in ipairs(order) do ran = ran or points[key].sweep == sec[1] end
  if ran then
    for _, l in ipairs({ "### " .. sec[2], "", table_for(sec[1]), "" }) do sections[#sections + 1] = l end
  end
end
sections[#sections + 1] = legend
local tables = table.concat(sections, "\n")

-- HTTPS runs: handshakes.csv (openssl s_time), one row per variant and kind.
local hs_path = dir .. "/handshakes.csv"
local hs_file = meta.scheme == "https" and io.open(hs_path)
if hs_file then
  hs_file:close()
  local rows = read_csv(hs_path)
  local out = { "### Handshakes (openssl s_time, one small request per connection)", "",
    "| variant | full: conn/s | full: CPU µs | resumed: conn/s | resumed: CPU µs |", "|---|---:|---:|---:|---:|" }
  local by, order = {}, {}
  for _, r in ipairs(rows) do
    if not by[r.proxy] then by[r.proxy] = {}; order[#order + 1] = r.proxy end
    local n, secs, cpu = tonumber(r.connections) or 0, tonumber(r.seconds) or 0, tonumber(r.cpu_ns) or 0
    by[r.proxy][r.kind] = { rate = secs > 0 and n / secs or 0, cpu = n > 0 and cpu / 1000 / n or 0 }
  end
  local function f(x, fmt) return x and string.format(fmt, x) or "-" end
  for _, p in ipairs(order) do
    local new, reuse = by[p].new or {}, by[p].reuse or {}
    out[#out + 1] = string.format("| %s | %s | %s | %s | %s |", p, f(new.rate, "%.0f"), f(new.cpu, "%.0f"),
      f(reuse.rate, "%.0f"), f(reuse.cpu, "%.0f"))
  end
  out[#out + 1] = ""
  out[#out + 1] = "conn/s is what the single-threaded client reached (it does as much crypto as the server); " ..
    "CPU µs is the proxy's CPU per handshake, including the one proxied request."
  tables = tables .. "\n\n" .. table.concat(out, "\n")
end

io.write(tables, "\n")
if #notes > 0 then io.write("\nNot measured, not completely, or suspicious:\n", table.concat(notes, "\n"), "\n") end

---------------------------------------------------------------------------------------------
-- results.csv: one row per point and variant, medians + ratios.

do
  local f = assert(io.open(dir .. "/results.csv", "w"))
  f:write("sweep,conns,body_bytes,proxy,rounds,requests,rps,rps_min,rps_max,p50_us,p99_us,p999_us,cpu_us_per_req,rss_kb,errors,",
    "rps_vs_nginx,p50_vs_nginx,p99_vs_nginx,p999_vs_nginx,cpu_vs_nginx,rss_vs_nginx\n")
  local function num(v, pat) return v and string.format(pat or "%.3f", v) or "" end
  for _, key in ipairs(order) do
    local p = points[key]
    for _, proxy in ipairs(proxies) do
      local s = p.by[proxy]
      if s then
        f:write(table.concat({ p.sweep, p.conns, p.body, proxy, s.rounds, s.requests,
          num(s.rps, "%.1f"), num(s.rps_min, "%.1f"), num(s.rps_max, "%.1f"), num(s.p50, "%.0f"), num(s.p99, "%.0f"), num(s.p999, "%.0f"), num(s.cpu),
          num(s.rss, "%.0f"), s.errors,
          num(ratio(p, proxy, "rps")), num(ratio(p, proxy, "p50")), num(ratio(p, proxy, "p99")),
          num(ratio(p, proxy, "p999")), num(ratio(p, proxy, "cpu")), num(ratio(p, proxy, "rss")) }, ","), "\n")
      end
    end
  end
  f:close()
end

---------------------------------------------------------------------------------------------
-- Plots (gnuplot, pngcairo).

local COLORS = { moonring = "#d62728", ["moonring-lua"] = "#ff7f0e", ["moonring-baseline"] = "#8c564b",
  ["moonring-ngx"] = "#9467bd", nginx = "#2ca02c",
  ["nginx-lua"] = "#17becf", haproxy = "#1f77b4", relay = "#7f7f7f", direct = "#000000" }

-- Writes NAME.dat with one x column (plus a label column) and one column per variant.
local function write_dat(name, sweep, xfield, fig, scale)
  local f = assert(io.open(dir .. "/" .. name .. ".dat", "w"))
  local cols = {}
  for _, proxy in ipairs(proxies) do
    for _, key in ipairs(order) do
      if points[key].sweep == sweep and points[key].by[proxy] then cols[#cols + 1] = proxy; break end
    end
  end
  f:write("x label ", table.concat(cols, " "), "\n")
  for _, key in ipairs(order) do
    local p = points[key]
    if p.sweep == sweep then
      local row = { p[xfield], '"' .. (xfield == "body" and size(p.body) or tostring(p.conns)) .. '"' }
      for _, proxy in ipairs(cols) do
        local s = p.by[proxy]
        row[#row + 1] = (s and s[fig]) and string.format("%.3f", s[fig] * scale) or "?"
      end
      f:write(table.concat(row, " "), "\n")
    end
  end
  f:close()
  return cols
end

local gp = {}
local gp_header = {
  'set terminal pngcairo size 960,600 font "sans,10"',
  'set datafile missing "?"',
  "set grid",
  "set key outside right top",
  "set bmargin 5",
  string.format('set label 1 "%s, %s cores, %s — %s run, median of %s round(s)" at screen 0.01,0.02 font "sans,8"',
    (meta.cpu_model or ""):gsub('"', ""), meta.cores or "?", meta.kernel or "", meta.mode or "", meta.rounds or "?"),
}
local function plot(name, sweep, xfield, fig, scale, title, ylabel, opts)
  local cols = write_dat(name, sweep, xfield, fig, scale)
  if #cols == 0 then return end
  gp[#gp + 1] = "reset session" -- keep one plot's settings out of the next
  for _, l in ipairs(gp_header) do gp[#gp + 1] = l end
  gp[#gp + 1] = string.format('set output "%s/%s.png"', dir, name)
  gp[#gp + 1] = string.format('set title "%s"', title)
  gp[#gp + 1] = string.format('set ylabel "%s"', ylabel)
  gp[#gp + 1] = "set yrange [0:*]"
  for _, o in ipairs(opts or {}) do gp[#gp + 1] = o end
  local using = xfield == "body" and "0:%d:xtic(2)" or "1:%d"
  local parts = {}
  for i, proxy in ipairs(cols) do
    parts[#parts + 1] = string.format('"%s/%s.dat" using %s with linespoints lw 2 pt 7 lc rgb "%s" title "%s"',
      dir, name, string.format(using, i + 2), COLORS[proxy] or "#9467bd", proxy)
  end
  gp[#gp + 1] = "plot " .. table.concat(parts, ", \\\n     ")
end

local CONNS_AXIS = { 'set xlabel "connections"', "set logscale x", "set xtics (1, 10, 50, 100, 256)",
  "set xrange [0.8:320]" }
plot("rps_vs_conns", "conc", "conns", "rps", 1, "Requests/s vs connections (" .. size(tonumber(meta.conc_body) or 12) .. " body)",
  "requests/s", CONNS_AXIS)
plot("rps_vs_body", "body", "body", "rps", 1, "Requests/s vs body size (" .. (meta.body_conns or "50") .. " connections)",
  "requests/s (log)", { "set xlabel \"response body\"", "set logscale y", "set yrange [*:*]" })
plot("p99_vs_conns", "conc", "conns", "p99", 1 / 1000, "p99 latency vs connections (lower is better)",
  "p99 latency (ms, log)", { CONNS_AXIS[1], CONNS_AXIS[2], CONNS_AXIS[3], CONNS_AXIS[4], "set logscale y", "set yrange [*:*]" })
plot("cpu_vs_conns", "conc", "conns", "cpu", 1, "Proxy CPU per request vs connections (lower is better)",
  "CPU µs / request", CONNS_AXIS)

-- The close point: one x per variant, its req/s and CPU µs/request as ratios to nginx.
do
  local key = nil
  for _, k in ipairs(order) do if points[k].sweep == "close" then key = k end end
  local p = key and points[key]
  if p and p.by.nginx then
    local f = assert(io.open(dir .. "/close_vs_nginx.dat", "w"))
    f:write("variant rps_ratio cpu_ratio\n")
    local n = 0
    for _, proxy in ipairs(proxies) do
      if p.by[proxy] and ratio(p, proxy, "rps") then
        f:write(string.format('"%s" %.3f %.3f\n', proxy, ratio(p, proxy, "rps"), ratio(p, proxy, "cpu") or 0))
        n = n + 1
      end
    end
    f:close()
    if n > 0 then
      gp[#gp + 1] = "reset session"
      for _, l in ipairs(gp_header) do gp[#gp + 1] = l end
      gp[#gp + 1] = string.format('set output "%s/close_vs_nginx.png"', dir)
      gp[#gp + 1] = string.format('set title "A new connection per request (Connection: close, %s connections): ratio to nginx"',
        meta.close_conns or "50")
      gp[#gp + 1] = 'set ylabel "ratio to nginx (req/s: higher is better; CPU: lower is better)"'
      gp[#gp + 1] = "set yrange [0:*]"
      gp[#gp + 1] = string.format("set xrange [-0.6:%.1f]", n - 0.4)
      gp[#gp + 1] = "set style data histogram"
      gp[#gp + 1] = "set style histogram clustered gap 1"
      gp[#gp + 1] = "set style fill solid 0.8 border -1"
      gp[#gp + 1] = string.format('plot "%s/close_vs_nginx.dat" using 2:xtic(1) title "req/s" lc rgb "#1f77b4", ' ..
        '"" using 3 title "CPU µs/request" lc rgb "#d62728", 1 with lines dt 2 lc rgb "#000000" notitle', dir)
    end
  end
end

local pngs = {}
do
  local f = assert(io.open(dir .. "/plots.gp", "w"))
  f:write(table.concat(gp, "\n"), "\n")
  f:close()
  local function sh(cmd) local r = os.execute(cmd); return r == 0 or r == true end
  if #gp == 0 then
    -- nothing measured, nothing to plot
  elseif sh("command -v gnuplot >/dev/null 2>&1") then
    if not sh(string.format("gnuplot '%s/plots.gp'", dir)) then
      io.stderr:write("[bench] gnuplot failed; see ", dir, "/plots.gp\n")
    end
  else
    io.stderr:write("[bench] gnuplot not found: no PNGs\n")
  end
  for _, n in ipairs({ "rps_vs_conns", "rps_vs_body", "p99_vs_conns", "cpu_vs_conns", "close_vs_nginx" }) do
    local p = io.open(dir .. "/" .. n .. ".png", "r")
    if p then p:close(); pngs[#pngs + 1] = n .. ".png" end
  end
end

---------------------------------------------------------------------------------------------
-- summary.md

do
  local f = assert(io.open(dir .. "/summary.md", "w"))
  local m = function(k) return meta[k] or "?" end
  f:write("## Performance\n\n")
  f:write(string.format("Measured with `bench/run%s` on %s.\n\n", m("mode") == "quick" and " --quick" or "", m("date")))
  f:write("**Machine:** ", m("cores"), " cores (", m("cpu_model"), "), ", m("memory"), ", ", m("os"),
    ", kernel ", m("kernel"), ".\n\n")
  f:write("**Versions:** moonring ", m("moonring"), "; nginx ", m("nginx"), " (Lua module ", m("nginx_lua"),
    "); HAProxy ", m("haproxy"), "; wrk ", m("wrk"), "; liburing ", m("liburing"), ".\n\n")
  f:write("**Method:** every variant runs one worker pinned to CPU ", m("proxy_cpu"),
    "; the origin (nginx serving fixed bodies over keep-alive) and wrk (1 thread) share CPU ", m("load_cpu"),
    ". All variants keep an upstream keep-alive pool (256) except `relay`, which opens one origin connection ",
    "per client connection. Loopback HTTP/1.1 only. ", m("rounds"), " interleaved round(s) of ", m("duration"),
    " s per point and variant; the median is reported.\n\n")
  if m("scheme") == "https" then
    f:write("**HTTPS:** clients speak TLS to the proxies (", m("tls"), "); the origin is plain HTTP. ",
      "`relay` and `direct` have no TLS.\n\n")
  end
  f:write("Variants: `moonring` (plain route), `moonring-lua` (two-filter Lua chain: read a header, route on ",
    "a path prefix, set a request and a response header), `nginx` (proxy_pass + upstream keepalive), ",
    "`nginx-lua` (the same chain in access_by_lua + header_filter_by_lua), `haproxy` (http-reuse always), ",
    "`relay` (a no-parse io_uring byte relay: the kernel floor).\n\n")
  f:write(tables:gsub("### ", "#### "), "\n\n")
  if #notes > 0 then f:write("Not measured, not completely, or suspicious:\n\n", table.concat(notes, "\n"), "\n\n") end
  if #pngs > 0 then
    f:write("Plots (written next to this file, in `bench/results/`):\n\n")
    for _, p in ipairs(pngs) do f:write("![", p:gsub("%.png$", ""), "](", p, ")\n") end
    f:write("\n")
  end
  f:write("Caveats: 2 cores, so the load generator and the origin share a core and can cap the fastest ",
    "variants (look at `relay`: it shows that ceiling); loopback networking is partly charged to the ",
    "process that sends, so CPU/request includes some kernel TCP work of the receiving side; figures are ",
    "for this machine only. See bench/README.md.\n")
  f:close()
end
