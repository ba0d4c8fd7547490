-- cjson.encode and cjson.decode as Redis 7.0's lua-cjson 2.1.0 behaves with Redis's settings: numbers to 14
-- significant digits, '/' escaped, an empty table as {}, arrays sparser than half (beyond 10 items) refused,
-- 1000 levels of nesting at most, null as the cjson.null sentinel. Written in Lua, so the time limit's hook
-- interrupts a large encode or decode as it interrupts the script. Error texts are lua-cjson's, prefixed with
-- the line that called, as Redis shows them; a call in a tail position (`return cjson.encode(x)`) has left its
-- line behind, so its error names none where Redis's does. The configuration functions (encode_keep_buffer and kin) are
-- not here.
local getinfo, format, byte, char, sub, find, gsub, match = debug.getinfo, string.format, string.byte,
  string.char, string.sub, string.find, string.gsub, string.match
local type, next, rawget, rawset, tonumber, select, error, floor, huge, concat =
  type, next, rawget, rawset, tonumber, select, error, math.floor, math.huge, table.concat
local MAX_DEPTH = 1000

local null = newproxy(false)

-- lua-cjson raises with luaL_error, which names the line of the function that called encode or decode: the
-- script's, or none when that was pcall (C) or the call was a tail call. Each entry point notes it here.
local where = ''
local function raise(message)
  error(where .. message, 0)
end

local function note_caller()
  local caller = getinfo(3, 'Sl')
  where = (caller and caller.currentline > 0) and format('%s:%d: ', caller.short_src, caller.currentline) or ''
end

-- luaL_argerror's text: the name the caller used for the function ('?' when it was called by pcall).
local function bad_argument(own_name, extra)
  local caller = getinfo(3, 'S')  -- level 2: encode or decode, as its caller named it ('?' for pcall)
  local name = getinfo(2, 'n').name or (caller and caller.what == 'tail' and own_name) or '?'
  raise(format("bad argument #1 to '%s' (%s)", name, extra))
end

-- encode ------------------------------------------------------------------------------------------------------
local escapes = {['"'] = '\\"', ['\\'] = '\\\\', ['/'] = '\\/', ['\b'] = '\\b', ['\f'] = '\\f', ['\n'] = '\\n',
                 ['\r'] = '\\r', ['\t'] = '\\t', ['\127'] = '\\u007f'}
for code = 0, 31 do
  local c = char(code)
  escapes[c] = escapes[c] or format('\\u%04x', code)
end

local function quote(text)
  return '"' .. gsub(text, '[%c"\\/\127]', escapes) .. '"'
end

local function number(value)
  if value ~= value or value == huge or value == -huge then raise('Cannot serialise number: must not be NaN or Inf') end
  return format('%.14g', value)
end

-- lua-cjson's lua_array_length: the largest positive integer key, -1 when a key is anything else.
local function array_length(value)
  local max, items = 0, 0
  for key in next, value do
    if type(key) ~= 'number' or key < 1 or floor(key) ~= key then return -1 end
    if key > max then max = key end
    items = items + 1
  end
  if max > items * 2 and max > 10 then raise('Cannot serialise table: excessively sparse array') end
  return max
end

local append
local function append_table(value, depth, out)
  if depth > MAX_DEPTH then raise(format('Cannot serialise, excessive nesting (%d)', depth)) end
  local length = array_length(value)
  if length > 0 then
    out[#out + 1] = '['
    for i = 1, length do
      if i > 1 then out[#out + 1] = ',' end
      append(rawget(value, i), depth, out)
    end
    out[#out + 1] = ']'
    return
  end
  out[#out + 1] = '{'
  local first = true
  for key, item in next, value do
    if not first then out[#out + 1] = ',' end
    first = false
    local kind = type(key)
    if kind == 'number' then out[#out + 1] = '"' .. number(key) .. '":'
    elseif kind == 'string' then out[#out + 1] = quote(key) .. ':'
    else raise(format('Cannot serialise %s: table key must be a number or string', kind)) end
    append(item, depth, out)
  end
  out[#out + 1] = '}'
end

append = function(value, depth, out)
  local kind = type(value)
  if kind == 'string' then out[#out + 1] = quote(value)
  elseif kind == 'number' then out[#out + 1] = number(value)
  elseif kind == 'boolean' then out[#out + 1] = value and 'true' or 'false'
  elseif kind == 'table' then append_table(value, depth + 1, out)
  elseif value == nil or value == null then out[#out + 1] = 'null'
  else raise(format('Cannot serialise %s: type not supported', kind)) end
end

local function encode(...)
  note_caller()
  if select('#', ...) ~= 1 then bad_argument('encode', 'expected 1 argument') end
  local out = {}
  append((...), 0, out)
  return concat(out)
end

-- decode ------------------------------------------------------------------------------------------------------
local WHITESPACE = {[32] = true, [9] = true, [10] = true, [13] = true}
local SINGLE = {[123] = 'T_OBJ_BEGIN', [125] = 'T_OBJ_END', [91] = 'T_ARR_BEGIN', [93] = 'T_ARR_END',
                [58] = 'T_COLON', [44] = 'T_COMMA'}
local UNESCAPE = {['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t'}

local function utf8(code)
  if code < 0x80 then return char(code) end
  if code < 0x800 then return char(0xC0 + floor(code / 0x40), 0x80 + code % 0x40) end
  if code < 0x10000 then
    return char(0xE0 + floor(code / 0x1000), 0x80 + floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
  end
  return char(0xF0 + floor(code / 0x40000), 0x80 + floor(code / 0x1000) % 0x40, 0x80 + floor(code / 0x40) % 0x40,
              0x80 + code % 0x40)
end

-- A string token from the opening quote at `pos`: its value and the position after it, or nil, error, where.
local function read_string(text, pos)
  local parts, i = {}, pos + 1
  while true do
    local stop = find(text, '["\\]', i)
    if not stop then return nil, 'unexpected end of string', #text + 1 end
    parts[#parts + 1] = sub(text, i, stop - 1)
    if sub(text, stop, stop) == '"' then return concat(parts), stop + 1 end
    local code = sub(text, stop + 1, stop + 1)
    if code == 'u' then
      local value = tonumber(sub(text, stop + 2, stop + 5), 16)
      if not value or not find(sub(text, stop + 2, stop + 5), '^%x%x%x%x$') then
        return nil, 'invalid unicode escape code', stop
      end
      i = stop + 6
      if value >= 0xD800 and value < 0xDC00 then  -- a surrogate pair's first half: the second must follow
        local low = sub(text, i, i + 1) == '\\u' and tonumber(sub(text, i + 2, i + 5), 16)
        if not low or low < 0xDC00 or low > 0xDFFF then return nil, 'invalid unicode escape code', stop end
        value, i = 0x10000 + (value - 0xD800) * 0x400 + (low - 0xDC00), i + 6
      elseif value >= 0xDC00 and value < 0xE000 then
        return nil, 'invalid unicode escape code', stop
      end
      parts[#parts + 1] = utf8(value)
    elseif UNESCAPE[code] then
      parts[#parts + 1] = UNESCAPE[code]
      i = stop + 2
    else
      return nil, 'invalid escape code', stop
    end
  end
end

-- The next token at or after `pos`: its type, its value, where it starts and the position after it.
local function next_token(text, pos)
  while WHITESPACE[byte(text, pos)] do pos = pos + 1 end
  local c = byte(text, pos)
  if c == nil then return 'T_END', nil, pos, pos end
  if SINGLE[c] then return SINGLE[c], nil, pos, pos + 1 end
  if c == 34 then
    local value, after, where = read_string(text, pos)
    if value == nil then return 'T_ERROR', after, where, where end
    return 'T_STRING', value, pos, after
  end
  if sub(text, pos, pos + 3) == 'true' then return 'T_BOOLEAN', true, pos, pos + 4 end
  if sub(text, pos, pos + 4) == 'false' then return 'T_BOOLEAN', false, pos, pos + 5 end
  if sub(text, pos, pos + 3) == 'null' then return 'T_NULL', null, pos, pos + 4 end
  -- Numbers as strtod reads them (hex, inf and nan included, as Redis's cjson allows): the longest prefix.
  local run = match(text, '^[%w%.%+%-]+', pos)
  if run and (c == 45 or c == 43 or (c >= 48 and c <= 57) or find(run, '^[iInN]')) then
    for length = #run, 1, -1 do
      local value = tonumber(sub(run, 1, length))
      if value then return 'T_NUMBER', value, pos, pos + length end
    end
    -- lua-cjson hands a token starting like a number to strtod and names what strtod refuses a number
    if c == 45 or c == 43 or (c >= 48 and c <= 57) then return 'T_ERROR', 'invalid number', pos, pos end
  end
  return 'T_ERROR', 'invalid token', pos, pos
end

local function expected(what, kind, value, where)
  raise(format('Expected %s but found %s at character %d', what, kind == 'T_ERROR' and value or kind, where))
end

local parse_object, parse_array
-- The value that starts with the token just read (its kind, value, start and the position after it).
local function value_of(text, depth, kind, value, where, after)
  if kind == 'T_OBJ_BEGIN' or kind == 'T_ARR_BEGIN' then
    if depth >= MAX_DEPTH then
      raise(format('Found too many nested data structures (%d) at character %d', depth + 1, where))
    end
    return (kind == 'T_OBJ_BEGIN' and parse_object or parse_array)(text, after, depth + 1)
  end
  if kind == 'T_STRING' or kind == 'T_NUMBER' or kind == 'T_BOOLEAN' or kind == 'T_NULL' then return value, after end
  expected('value', kind, value, where)
end

parse_object = function(text, pos, depth)
  local result = {}
  local kind, value, where, after = next_token(text, pos)
  if kind == 'T_OBJ_END' then return result, after end
  while true do
    if kind ~= 'T_STRING' then expected('object key string', kind, value, where) end
    local key = value
    kind, value, where, after = next_token(text, after)
    if kind ~= 'T_COLON' then expected('colon', kind, value, where) end
    local item
    item, after = value_of(text, depth, next_token(text, after))
    rawset(result, key, item)
    kind, value, where, after = next_token(text, after)
    if kind == 'T_OBJ_END' then return result, after end
    if kind ~= 'T_COMMA' then expected('comma or object end', kind, value, where) end
    kind, value, where, after = next_token(text, after)
  end
end

parse_array = function(text, pos, depth)
  local result, i = {}, 1
  local kind, value, where, after = next_token(text, pos)
  if kind == 'T_ARR_END' then return result, after end
  while true do
    local item
    item, after = value_of(text, depth, kind, value, where, after)
    rawset(result, i, item)
    i = i + 1
    kind, value, where, after = next_token(text, after)
    if kind == 'T_ARR_END' then return result, after end
    if kind ~= 'T_COMMA' then expected('comma or array end', kind, value, where) end
    kind, value, where, after = next_token(text, after)
  end
end

local function decode(...)
  note_caller()
  if select('#', ...) ~= 1 then bad_argument('decode', 'expected 1 argument') end
  local text = ...
  local kind = type(text)
  if kind == 'number' then text = format('%.14g', text)
  elseif kind ~= 'string' then
    bad_argument('decode', format('string expected, got %s', kind == 'nil' and 'no value' or kind))
  end
  if #text >= 2 and (byte(text, 1) == 0 or byte(text, 2) == 0) then
    raise('JSON parser does not support UTF-16 or UTF-32')
  end
  local nul = find(text, '\0', 1, true)  -- lua-cjson reads a C string: it ends at the first NUL
  if nul then text = sub(text, 1, nul - 1) end
  local result, after = value_of(text, 0, next_token(text, 1))
  local kind, value, where = next_token(text, after)
  if kind ~= 'T_END' then expected('the end', kind, value, where) end
  return result
end

return {encode = encode, decode = decode, null = null, _NAME = 'cjson', _VERSION = '2.1.0'}
