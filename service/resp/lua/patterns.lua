-- Lua 5.1's string.find, match, gmatch and gsub, for the sandbox. C's matcher backtracks inside one C call that
-- no hook interrupts, so a pattern with several quantifiers on a long string can hold the server for hours
-- (a single `a*` is already quadratic over all start positions). A call whose cost is bounded (no quantifier,
-- or one on a short subject) goes to C; any other runs this line-by-line port of lstrlib.c's matcher, which
-- the time limit's instruction hook stops like the script's own code. Same results, same error texts.
local byte, sub, find, format, char = string.byte, string.sub, string.find, string.format, string.char
local c_find, c_match, c_gmatch, c_gsub = string.find, string.match, string.gmatch, string.gsub
local type, tostring, tonumber, error, getinfo, concat, select, floor, ceil = type, tostring, tonumber, error,
  debug.getinfo, table.concat, select, math.floor, math.ceil

local L_ESC, MAXCAPTURES, CAP_UNFINISHED, CAP_POSITION = 37, 32, -1, -2  -- 37: '%'
local C_BUDGET = 1e8  -- matcher steps C may take in one call (about a tenth of a second)

-- Errors as luaL_error raises them: prefixed with the position of the code that called string.find & co. Each
-- public function notes its caller on entry (a replacement function may call another: gsub notes itself again).
-- A call in a tail position (`return string.find(...)`) has left its caller's line behind, so its error names
-- none where Redis's, made in C, does.
local where, fname, namewhat = '', '?', ''
local function note_caller(own_name)
  local info, caller = getinfo(2, 'n'), getinfo(3, 'Sl')  -- the public function, and its caller
  -- Unnamed when C called it (pcall: '?', as Lua says) or a tail call left no caller (Redis, in C, has one).
  fname, namewhat = info.name or (caller and caller.what == 'tail' and own_name) or '?', info.namewhat
  where = (caller and caller.currentline > 0) and format('%s:%d: ', caller.short_src, caller.currentline) or ''
end

local function raise(message)
  error(where .. message, 0)
end

-- luaL_argerror: a method call (s:find(...)) does not count `self` among the arguments.
local function bad_argument(n, extra)
  if namewhat == 'method' then
    n = n - 1
    if n == 0 then raise(format("calling '%s' on bad self (%s)", fname, extra)) end
  end
  raise(format("bad argument #%d to '%s' (%s)", n, fname, extra))
end

-- ctype's classes for the C locale
local function is_alpha(c) return (c >= 65 and c <= 90) or (c >= 97 and c <= 122) end
local function is_digit(c) return c >= 48 and c <= 57 end
local function is_lower(c) return c >= 97 and c <= 122 end
local function is_upper(c) return c >= 65 and c <= 90 end
local function is_space(c) return c == 32 or (c >= 9 and c <= 13) end
local function is_cntrl(c) return c < 32 or c == 127 end
local function is_punct(c) return c > 32 and c < 127 and not is_alpha(c) and not is_digit(c) end
local function is_xdigit(c) return is_digit(c) or (c >= 97 and c <= 102) or (c >= 65 and c <= 70) end

local CLASSES = {
  [97] = is_alpha, [99] = is_cntrl, [100] = is_digit, [108] = is_lower, [112] = is_punct, [115] = is_space,
  [117] = is_upper, [119] = function(c) return is_alpha(c) or is_digit(c) end, [120] = is_xdigit,
  [122] = function(c) return c == 0 end,
}

local function match_class(c, cl)
  local test = CLASSES[is_upper(cl) and cl + 32 or cl]
  if not test then return cl == c end
  local res = test(c)
  if is_lower(cl) then return res end
  return not res
end

-- Positions are 1-based indexes into the pattern `p` (a string whose byte past the end reads as 0) and the
-- subject; the state holds the subject, its end, the pattern and the captures.
local function pat(ms, i) return byte(ms.p, i) or 0 end

local function class_end(ms, p)
  local c = pat(ms, p)
  p = p + 1
  if c == L_ESC then
    if pat(ms, p) == 0 then raise("malformed pattern (ends with '%')") end
    return p + 1
  end
  if c == 91 then  -- '['
    if pat(ms, p) == 94 then p = p + 1 end  -- '^'
    repeat
      if pat(ms, p) == 0 then raise("malformed pattern (missing ']')") end
      local cc = pat(ms, p)
      p = p + 1
      if cc == L_ESC and pat(ms, p) ~= 0 then p = p + 1 end
    until pat(ms, p) == 93  -- ']'
    return p + 1
  end
  return p
end

local function match_bracket_class(ms, c, p, ec)
  local sig = true
  if pat(ms, p + 1) == 94 then sig = false; p = p + 1 end
  p = p + 1
  while p < ec do
    local pc = pat(ms, p)
    if pc == L_ESC then
      p = p + 1
      if match_class(c, pat(ms, p)) then return sig end
    elseif pat(ms, p + 1) == 45 and p + 2 < ec then  -- a range 'a-z'
      p = p + 2
      if pat(ms, p - 2) <= c and c <= pat(ms, p) then return sig end
    elseif pc == c then
      return sig
    end
    p = p + 1
  end
  return not sig
end

local function single_match(ms, c, p, ep)
  local pc = pat(ms, p)
  if pc == 46 then return true end  -- '.'
  if pc == L_ESC then return match_class(c, pat(ms, p + 1)) end
  if pc == 91 then return match_bracket_class(ms, c, p, ep - 1) end
  return pc == c
end

local do_match

local function match_balance(ms, s, p)
  local b, e = pat(ms, p), pat(ms, p + 1)
  if b == 0 or e == 0 then raise('unbalanced pattern') end
  if s > ms.len or byte(ms.s, s) ~= b then return nil end
  local cont = 1
  s = s + 1
  while s <= ms.len do
    local c = byte(ms.s, s)
    if c == e then
      cont = cont - 1
      if cont == 0 then return s + 1 end
    elseif c == b then
      cont = cont + 1
    end
    s = s + 1
  end
  return nil
end

local function max_expand(ms, s, p, ep)
  local i = 0
  while s + i <= ms.len and single_match(ms, byte(ms.s, s + i), p, ep) do i = i + 1 end
  while i >= 0 do
    local res = do_match(ms, s + i, ep + 1)
    if res then return res end
    i = i - 1
  end
  return nil
end

local function min_expand(ms, s, p, ep)
  while true do
    local res = do_match(ms, s, ep + 1)
    if res then return res end
    if s <= ms.len and single_match(ms, byte(ms.s, s), p, ep) then s = s + 1 else return nil end
  end
end

local function start_capture(ms, s, p, what)
  local level = ms.level
  if level >= MAXCAPTURES then raise('too many captures') end
  ms.init[level + 1], ms.clen[level + 1] = s, what
  ms.level = level + 1
  local res = do_match(ms, s, p)
  if res == nil then ms.level = ms.level - 1 end
  return res
end

local function capture_to_close(ms)
  for level = ms.level, 1, -1 do
    if ms.clen[level] == CAP_UNFINISHED then return level end
  end
  raise('invalid pattern capture')
end

local function end_capture(ms, s, p)
  local l = capture_to_close(ms)
  ms.clen[l] = s - ms.init[l]
  local res = do_match(ms, s, p)
  if res == nil then ms.clen[l] = CAP_UNFINISHED end
  return res
end

local function check_capture(ms, l)
  l = l - 48  -- '1' is capture 1
  if l < 1 or l > ms.level or ms.clen[l] == CAP_UNFINISHED then raise('invalid capture index') end
  return l
end

local function match_capture(ms, s, l)
  l = check_capture(ms, l)
  local len = ms.clen[l]
  if ms.len - s + 1 >= len and sub(ms.s, ms.init[l], ms.init[l] + len - 1) == sub(ms.s, s, s + len - 1) then
    return s + len
  end
  return nil
end

do_match = function(ms, s, p)
  while true do
    local pc = pat(ms, p)
    if pc == 40 then  -- '('
      if pat(ms, p + 1) == 41 then return start_capture(ms, s, p + 2, CAP_POSITION) end
      return start_capture(ms, s, p + 1, CAP_UNFINISHED)
    elseif pc == 41 then  -- ')'
      return end_capture(ms, s, p + 1)
    elseif pc == 0 then
      return s
    end
    local default = true
    if pc == L_ESC then
      local nc = pat(ms, p + 1)
      if nc == 98 then  -- %b
        s = match_balance(ms, s, p + 2)
        if s == nil then return nil end
        p = p + 4
        default = false
      elseif nc == 102 then  -- %f
        p = p + 2
        if pat(ms, p) ~= 91 then raise("missing '[' after '%f' in pattern") end
        local ep = class_end(ms, p)
        local previous = s == 1 and 0 or byte(ms.s, s - 1)
        local current = byte(ms.s, s) or 0
        if match_bracket_class(ms, previous, p, ep - 1) or not match_bracket_class(ms, current, p, ep - 1) then
          return nil
        end
        p = ep
        default = false
      elseif is_digit(nc) then
        s = match_capture(ms, s, nc)
        if s == nil then return nil end
        p = p + 2
        default = false
      end
    elseif pc == 36 and pat(ms, p + 1) == 0 then  -- '$' at the end
      return s == ms.len + 1 and s or nil
    end
    if default then
      local ep = class_end(ms, p)
      local m = s <= ms.len and single_match(ms, byte(ms.s, s), p, ep)
      local epc = pat(ms, ep)
      if epc == 63 then  -- '?'
        if m then
          local res = do_match(ms, s + 1, ep + 1)
          if res then return res end
        end
        p = ep + 1
      elseif epc == 42 then  -- '*'
        return max_expand(ms, s, p, ep)
      elseif epc == 43 then  -- '+'
        return m and max_expand(ms, s + 1, p, ep) or nil
      elseif epc == 45 then  -- '-'
        return min_expand(ms, s, p, ep)
      else
        if not m then return nil end
        s = s + 1
        p = ep
      end
    end
  end
end

local function new_state(s, p)
  local nul = find(p, '\0', 1, true)  -- C reads the pattern as a C string: it ends at the first NUL
  return {s = s, len = #s, p = nul and sub(p, 1, nul - 1) or p, level = 0, init = {}, clen = {}}
end

local function get_capture(ms, i, s, e)
  if i > ms.level then
    if i == 1 then return sub(ms.s, s, e - 1) end  -- the whole match
    raise('invalid capture index')
  end
  local l = ms.clen[i]
  if l == CAP_UNFINISHED then raise('unfinished capture') end
  if l == CAP_POSITION then return ms.init[i] end
  return sub(ms.s, ms.init[i], ms.init[i] + l - 1)
end

local function captures(ms, s, e, whole)
  local n = (ms.level == 0 and whole) and 1 or ms.level
  local out = {}
  for i = 1, n do out[i] = get_capture(ms, i, s, e) end
  return out, n
end

local unpack = unpack

-- Whether C may run this call: its matcher costs up to the subject's length times the pattern's with no
-- quantifier, and the subject's length squared times the pattern's with one (every start, every length).
local function bounded(subject, pattern)
  local plain = c_gsub(c_gsub(pattern, '%%[^b]', 'x'), '%[.-%]', 'x')  -- escapes and sets are single items
  local _, quantifiers = c_gsub(plain, '[%*%+%-%?]', '')
  local _, balances = c_gsub(plain, '%%b', '')
  quantifiers = quantifiers + balances
  if quantifiers == 0 then return #subject * #pattern <= C_BUDGET end
  return quantifiers == 1 and #subject * #subject * #pattern <= C_BUDGET
end

local function check_string(value, n)
  local kind = type(value)
  if kind == 'number' then return tostring(value) end
  if kind ~= 'string' then bad_argument(n, format('string expected, got %s', value == nil and 'no value' or kind)) end
  return value
end

-- luaL_optinteger: absent is the default; a number is cut toward zero as C casts it.
local function opt_integer(value, n, default)
  if value == nil then return default end
  local number = tonumber(value)
  if number == nil then bad_argument(n, format('number expected, got %s', type(value))) end
  return number >= 0 and floor(number) or ceil(number)
end

local function lua_find(find_mode, s, p, init)
  local ms = new_state(s, p)
  local anchor = pat(ms, 1) == 94
  local p1 = anchor and 2 or 1
  local s1 = init
  repeat
    ms.level = 0
    local e = do_match(ms, s1, p1)
    if e then
      if find_mode then
        local caps, n = captures(ms, nil, 0, false)
        return s1, e - 1, unpack(caps, 1, n)
      end
      local caps, n = captures(ms, s1, e, true)
      return unpack(caps, 1, n)
    end
    s1 = s1 + 1
  until s1 > ms.len + 1 or anchor
  return nil
end

local M = {}

local function str_find_aux(find_mode, ...)
  local s, p = check_string((...), 1), check_string(select(2, ...), 2)
  local init, plain = select(3, ...)
  init = opt_integer(init, 3, 1)
  if init < 0 then init = #s + init + 1 end  -- posrelat, then clamped into the string as Lua 5.1 does
  if init < 1 then init = 1 elseif init > #s + 1 then init = #s + 1 end
  if (find_mode and (plain or not find(p, '[%^%$%*%+%?%.%(%[%%%-]'))) or bounded(s, p) then
    return (find_mode and c_find or c_match)(...)
  end
  return lua_find(find_mode, s, p, init)
end

function M.find(...)
  note_caller('find')
  return str_find_aux(true, ...)
end

function M.match(...)
  note_caller('match')
  return str_find_aux(false, ...)
end

function M.gmatch(...)
  note_caller('gmatch')
  local s, p = check_string((...), 1), check_string(select(2, ...), 2)
  if bounded(s, p) then return c_gmatch(s, p) end
  local ms = new_state(s, p)
  local src = 1
  return function()
    while src <= ms.len + 1 do
      ms.level = 0
      local e = do_match(ms, src, 1)
      if e then
        local start = src
        src = (e == src) and e + 1 or e
        local caps, n = captures(ms, start, e, true)
        return unpack(caps, 1, n)
      end
      src = src + 1
    end
    return nil
  end
end

local function add_value(ms, out, s, e, repl, kind)
  local value
  if kind == 'string' then
    local i, rl = 1, #repl
    local parts = {}
    while i <= rl do
      local c = byte(repl, i)
      if c ~= L_ESC then
        parts[#parts + 1] = char(c)
      else
        i = i + 1
        local d = byte(repl, i) or 0  -- a '%' at the end reads the C string's terminating NUL
        if not is_digit(d) then
          parts[#parts + 1] = char(d)
        elseif d == 48 then  -- %0: the whole match
          parts[#parts + 1] = sub(ms.s, s, e - 1)
        else
          local cap = get_capture(ms, d - 48, s, e)
          parts[#parts + 1] = type(cap) == 'number' and tostring(cap) or cap
        end
      end
      i = i + 1
    end
    out[#out + 1] = concat(parts)
    return
  end
  local context = {where, fname, namewhat}  -- the replacement may call string functions of its own
  if kind == 'table' then
    value = repl[get_capture(ms, 1, s, e)]
  else
    local caps, n = captures(ms, s, e, true)
    value = repl(unpack(caps, 1, n))
  end
  where, fname, namewhat = context[1], context[2], context[3]
  if not value then
    out[#out + 1] = sub(ms.s, s, e - 1)  -- nil or false: keep the original text
  elseif type(value) == 'string' or type(value) == 'number' then
    out[#out + 1] = tostring(value)
  else
    raise(format('invalid replacement value (a %s)', type(value)))
  end
end

function M.gsub(...)
  note_caller('gsub')
  local src, p = check_string((...), 1), check_string(select(2, ...), 2)
  local repl, max_n = select(3, ...)
  local kind = type(repl)
  max_n = opt_integer(max_n, 4, #src + 1)
  if kind == 'number' then repl, kind = tostring(repl), 'string' end
  if kind ~= 'string' and kind ~= 'table' and kind ~= 'function' then
    bad_argument(3, 'string/function/table expected')
  end
  if bounded(src, p) then return c_gsub(...) end
  local ms = new_state(src, p)
  local anchor = pat(ms, 1) == 94
  local p1 = anchor and 2 or 1
  local s, n, out = 1, 0, {}
  while n < max_n do
    ms.level = 0
    local e = do_match(ms, s, p1)
    if e then
      n = n + 1
      add_value(ms, out, s, e, repl, kind)
    end
    if e and e > s then
      s = e
    elseif s <= ms.len then
      out[#out + 1] = sub(src, s, s)
      s = s + 1
    else
      break
    end
    if anchor then break end
  end
  out[#out + 1] = sub(src, s)
  return concat(out), n
end

return M
