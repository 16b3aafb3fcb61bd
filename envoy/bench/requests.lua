-- wrk script of envoy/bench/bench.py: every request is a line of a file, for the paths that
-- cannot repeat one request (a login is exchanged once, a refresh token is spent, a bearer
-- token must not be cached yet).
--
--   wrk -t1 ... -s requests.lua URL -- FILE FIRST COUNT MODE
--
-- FILE: one request per line: PATH, then TAB-separated "Name: value" headers, sent on top of
-- wrk's -H headers (a line's header replaces a -H header of the same name).
-- MODE "once": lines FIRST .. FIRST+COUNT-1 (0-based), each sent once, in order; when they
--   are all sent the slice starts over and every further request counts as reused.
-- MODE "cycle": every line of the file, round-robin, starting at line FIRST (mod the count).
-- Prints "bench-requests: generated N reused M lines L" at the end (N: requests made, which
-- includes those in flight when the run ended).

generated = 0
reused = 0
lines = 0

local reqs = {}
local mode = "once"
local first = 0

local function split(line)
  local parts = {}
  for part in string.gmatch(line, "[^\t]+") do
    parts[#parts + 1] = part
  end
  return parts
end

function init(args)
  local file = args[1]
  first = tonumber(args[2]) or 0
  local count = tonumber(args[3]) or 0
  mode = args[4] or "once"
  local base = {}
  for k, v in pairs(wrk.headers) do
    base[k] = v
  end
  local k = 0
  for line in io.lines(file) do
    if mode == "cycle" or (k >= first and k < first + count) then
      local parts = split(line)
      local headers = {}
      for name, value in pairs(base) do
        headers[name] = value
      end
      for i = 2, #parts do
        local name, value = string.match(parts[i], "^([^:]+):%s*(.*)$")
        for existing in pairs(headers) do
          if string.lower(existing) == string.lower(name) then
            headers[existing] = nil
          end
        end
        headers[name] = value
      end
      reqs[#reqs + 1] = wrk.format(nil, parts[1], headers)
    end
    k = k + 1
  end
  lines = #reqs
  if lines == 0 then
    error("requests.lua: no lines " .. first .. "+" .. count .. " in " .. file)
  end
  if mode == "cycle" then
    first = first % lines
  end
end

function request()
  local i
  if mode == "cycle" then
    i = (first + generated) % lines
  else
    i = generated
    if i >= lines then
      reused = reused + 1
      i = i % lines
    end
  end
  generated = generated + 1
  return reqs[i + 1]
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local g, r, l = 0, 0, 0
  for _, t in ipairs(threads) do
    g = g + t:get("generated")
    r = r + t:get("reused")
    l = l + t:get("lines")
  end
  io.write(string.format("bench-requests: generated %d reused %d lines %d\n", g, r, l))
end
