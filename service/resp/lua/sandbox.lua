-- The chunk that builds a tenant's sandbox. It receives Python's command bridge, sha1, clock, and the sources of
-- cjson and of the pattern functions, and returns the runner, the compiler and the collector. Every library
-- function it uses is captured as a local first, so a script that changes a shared metatable cannot change how
-- the runner behaves.
local py_call, py_pcall, py_error_text, py_error_of, py_setresp, py_sha1hex, clock = ...
local cjson_source, patterns_source = select(8, ...)
local sethook, getinfo = debug.sethook, debug.getinfo
local format, gsub, sub = string.format, string.gsub, string.sub
local concat, maxn = table.concat, table.maxn
local type, select, error, rawget, rawset, tostring = type, select, error, rawget, rawset, tostring
local pcall, xpcall, setfenv, loadstring, unpack = pcall, xpcall, setfenv, loadstring, unpack
local setmetatable, collectgarbage = setmetatable, collectgarbage
local SCRIPT, CJSON, PATTERNS = '@user_script', '=cjson', '=patterns'
local cjson = loadstring(cjson_source, CJSON)()
local patterns = loadstring(patterns_source, PATTERNS)()

local protected = setmetatable({}, {__mode = 'k'})
local function readonly(source)
  local proxy = {}
  protected[proxy] = true
  return setmetatable(proxy, {
    __index = source,
    __newindex = function() error('Attempt to modify a readonly table', 2) end,
    __metatable = false,
  })
end

local function copy(library, names, replaced)
  local t = {}
  for _, name in pairs(names) do t[name] = library[name] end
  for name, fn in pairs(replaced or {}) do t[name] = fn end
  return readonly(t)
end

-- redis.* ----------------------------------------------------------------------------------------------------
-- call, pcall and sha1hex are Python's own callables, not Lua wrappers: a Lua function reached by
-- `return redis.call(...)` would replace the script's frame (a tail call), and the error could not name the
-- script's line as Redis does.
local resp = 2  -- the protocol the running script chose (redis.setresp)
local deadline, limit_ms, stopped = 0, '0', nil  -- the running script's time limit, and its error once stopped
local redis = {
  call = py_call,
  pcall = py_pcall,
  error_reply = function(...)
    local msg = ...
    if select('#', ...) ~= 1 or type(msg) ~= 'string' then return {err = 'ERR wrong number or type of arguments'} end
    if sub(msg, 1, 1) ~= '-' then msg = '-' .. msg end
    return {err = py_error_text(msg)}
  end,
  status_reply = function(...)
    local msg = ...
    if select('#', ...) ~= 1 or type(msg) ~= 'string' then return {err = 'ERR wrong number or type of arguments'} end
    return {ok = msg}
  end,
  sha1hex = py_sha1hex,
  setresp = function(...)
    local version = ...
    if select('#', ...) ~= 1 then error('redis.setresp() requires one argument.', 0) end
    if version ~= 2 and version ~= 3 then error('RESP version must be 2 or 3.', 0) end
    resp = version
    py_setresp(version)  -- redis.call's replies are converted for this protocol
  end,
  -- Scripts' log lines would put tenant data in the operator's log: accepted and dropped.
  log = function() end,
  set_repl = function() end,
  replicate_commands = function() return true end,
  LOG_DEBUG = 0, LOG_VERBOSE = 1, LOG_NOTICE = 2, LOG_WARNING = 3,
  REPL_NONE = 0, REPL_AOF = 1, REPL_SLAVE = 2, REPL_REPLICA = 2, REPL_ALL = 3,
  REDIS_VERSION = '7.0.15', REDIS_VERSION_NUM = 0x07000f,
}

-- Redis 7.0's pcall hands back an error table's message, not the table (redis.call's error is a Python exception,
-- whose text is that message).
local function script_pcall(...)
  local results = {pcall(...)}
  if not results[1] then
    local err = results[2]
    if type(err) == 'userdata' then results[2] = py_error_of(err)
    elseif type(err) == 'table' then
      local msg = rawget(err, 'err')
      if type(msg) == 'string' or type(msg) == 'number' then results[2] = msg end
    end
  end
  return unpack(results, 1, maxn(results))
end

local globals
-- loadstring as Redis has it, minus bytecode (a known sandbox escape) and with the script's globals.
local function script_loadstring(chunk, name)
  if type(chunk) == 'string' and sub(chunk, 1, 1) == '\27' then return nil, 'bytecode is not allowed' end
  local fn, err = loadstring(chunk, name)
  if fn then setfenv(fn, globals) end
  return fn, err
end

-- A message handler that a stopped script's error reaches runs inside the hook, where Lua turns hooks off: a
-- handler that loops would never be stopped. Once stopped, the script's handlers are skipped.
local function script_xpcall(fn, msgh)
  return xpcall(fn, function(err)
    if stopped ~= nil then return err end
    if type(err) == 'userdata' then err = {err = py_error_of(err)} end  -- redis.call's error, as Redis's table
    return msgh(err)
  end)
end

local function script_rawset(t, key, value)
  if protected[t] then error('Attempt to modify a readonly table', 0) end
  return rawset(t, key, value)
end

local function script_setmetatable(t, metatable)
  if protected[t] then error('Attempt to modify a readonly table', 0) end
  return setmetatable(t, metatable)
end

local env = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = script_pcall,
  rawequal = rawequal, rawget = rawget, rawset = script_rawset, select = select, setmetatable = script_setmetatable,
  tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
  xpcall = script_xpcall, collectgarbage = collectgarbage, gcinfo = gcinfo, loadstring = script_loadstring,
  load = function(chunk, name)
    if type(chunk) ~= 'string' then return nil, 'load takes a string here' end
    return script_loadstring(chunk, name)
  end,
  _VERSION = _VERSION,
  string = copy(string, {'byte', 'char', 'dump', 'format', 'len', 'lower', 'rep', 'reverse', 'sub', 'upper'},
                patterns),  -- find, match, gmatch and gsub: C's where bounded, else Lua's, which the hook stops
  table = copy(table, {'concat', 'insert', 'maxn', 'remove', 'sort', 'getn', 'setn', 'foreach', 'foreachi'}),
  math = copy(math, {'abs', 'acos', 'asin', 'atan', 'atan2', 'ceil', 'cos', 'cosh', 'deg', 'exp', 'floor', 'fmod',
                     'frexp', 'huge', 'ldexp', 'log', 'log10', 'max', 'min', 'modf', 'pi', 'pow', 'rad', 'random',
                     'randomseed', 'sin', 'sinh', 'sqrt', 'tan', 'tanh'}),
  redis = readonly(redis),
  cjson = readonly(cjson),
}
-- Strings index the sandbox's string table; a script sees their metatable read-only, as in Redis.
local string_metatable = getmetatable('')
string_metatable.__index = env.string
local string_metatable_view = readonly(string_metatable)
env.getmetatable = function(value)
  if type(value) == 'string' then return string_metatable_view end
  return getmetatable(value)
end
globals = readonly(setmetatable(env, {__index = function(_, key)
  error("Script attempted to access nonexistent global variable '" .. tostring(key) .. "'", 2)
end}))
env._G = globals

-- running ----------------------------------------------------------------------------------------------------
local function hook()
  if stopped == nil then
    if clock() < deadline then return end
    stopped = {err = 'ERR script stopped: it ran past the time limit of ' .. limit_ms .. ' ms; its writes were undone'}
    sethook(hook, '', 1)  -- from now on every instruction of the script raises, so pcall cannot keep it alive
  end
  local info = getinfo(2, 'S')
  local source = info and info.source
  if source == SCRIPT or source == CJSON or source == PATTERNS then error(stopped, 0) end  -- not in the runner
end

-- The message handler: a string error becomes an error table; both get the script line that raised it.
local function handler(err)
  local level, info = 2, getinfo(2, 'Sl')
  while info and info.source ~= SCRIPT do level = level + 1; info = getinfo(level, 'Sl') end
  local msg
  if type(err) == 'userdata' then msg = py_error_of(err)  -- redis.call's error: the reply's text
  elseif type(err) == 'table' then msg = rawget(err, 'err') end
  if type(msg) ~= 'string' then  -- error({}) or error(nil): redis-server 7.0.15 crashes on the first
    msg = type(err) == 'table' and 'ERR the script raised a table without an err field' or 'ERR ' .. tostring(err)
  end
  return {err = msg, line = info and info.currentline}
end

local function clean(text) return (gsub(text, '[\r\n]', ' ')) end

local encode
local function bulk(text) return '$' .. #text .. '\r\n' .. text .. '\r\n' end

-- RESP3's types as Redis 7.0 writes them from a table's field; to a RESP2 client, as RESP2 has them.
local function encode_typed(value, null, out)
  local resp3 = null == '_\r\n'
  local double, big, verbatim = rawget(value, 'double'), rawget(value, 'big_number'), rawget(value, 'verbatim_string')
  local map, set = rawget(value, 'map'), rawget(value, 'set')
  if type(double) == 'number' then
    local text = format('%.17g', double)
    out[#out + 1] = resp3 and ',' .. text .. '\r\n' or bulk(text)
  elseif type(big) == 'string' then
    out[#out + 1] = resp3 and '(' .. clean(big) .. '\r\n' or bulk(big)
  elseif type(verbatim) == 'table' and type(rawget(verbatim, 'format')) == 'string'
      and type(rawget(verbatim, 'string')) == 'string' then
    local text = rawget(verbatim, 'string')
    out[#out + 1] = resp3 and '=' .. (#text + 4) .. '\r\n' .. rawget(verbatim, 'format') .. ':' .. text .. '\r\n'
                    or bulk(text)
  elseif type(map) == 'table' or type(set) == 'table' then
    local header, n = #out + 1, 0
    out[header] = ''
    for key, item in next, map or set do
      n = n + 1
      encode(key, null, out)
      if map then encode(item, null, out) end
    end
    if map then out[header] = resp3 and '%' .. n .. '\r\n' or '*' .. 2 * n .. '\r\n'
    else out[header] = (resp3 and '~' or '*') .. n .. '\r\n' end
  else
    return false
  end
  return true
end

local function encode_table(value, null, out)
  local err = rawget(value, 'err')
  if type(err) == 'string' then out[#out + 1] = '-' .. clean(err) .. '\r\n'; return end
  local ok = rawget(value, 'ok')
  if type(ok) == 'string' then out[#out + 1] = '+' .. clean(ok) .. '\r\n'; return end
  if encode_typed(value, null, out) then return end
  local header = #out + 1
  out[header] = ''
  local n = 0
  while rawget(value, n + 1) ~= nil do n = n + 1; encode(rawget(value, n), null, out) end
  out[header] = '*' .. n .. '\r\n'
end

encode = function(value, null, out)
  local kind = type(value)
  if kind == 'string' then out[#out + 1] = bulk(value)
  elseif kind == 'number' then out[#out + 1] = format(':%d\r\n', value)  -- C's cast, as Redis's (long long)
  elseif kind == 'boolean' then
    if resp == 3 and null == '_\r\n' then out[#out + 1] = value and '#t\r\n' or '#f\r\n'
    elseif value then out[#out + 1] = ':1\r\n'
    else out[#out + 1] = resp == 3 and ':0\r\n' or null end
  elseif kind == 'table' then encode_table(value, null, out)
  else out[#out + 1] = null end
end

-- KEYS and ARGV come as tables, not as varargs: a call's arguments live on the C stack, which holds about 8000.
local function run(fn, sha, null, stop_at, limit_s, keys, argv)
  rawset(env, 'KEYS', keys)
  rawset(env, 'ARGV', argv)
  resp, stopped, deadline, limit_ms = 2, nil, stop_at, format('%d', limit_s * 1000)
  sethook(hook, '', 10000)  -- instructions between clock checks
  local ok, result = xpcall(fn, handler)
  sethook()
  local out = {}
  if ok then
    ok, result = pcall(encode, result, null, out)
    if ok then return concat(out), false end
    result = {err = 'ERR ' .. tostring(result)}
  end
  if result == 'not enough memory' then return nil, false end  -- the caller says so, with the limit
  if type(result) ~= 'table' then result = {err = 'ERR ' .. tostring(result)} end
  local where = result.line and ', on ' .. SCRIPT .. ':' .. result.line or ''
  return '-' .. clean(result.err) .. ' script: ' .. sha .. where .. '.\r\n', stopped ~= nil
end

local function compile(body)
  local fn, err = loadstring(body, SCRIPT)
  if not fn then return nil, err end
  setfenv(fn, globals)
  return fn, nil
end

-- After a script ran out of memory, or a flush: a full collection, with the collector running again in case a
-- script stopped it.
local function reclaim()
  collectgarbage('restart')
  collectgarbage('collect')
end

return run, compile, reclaim
