"""Lua scripting: Redis 7.0's semantics byte for byte against redis-server, real clients (redis-py's Lock and
registered scripts), and what a server shared by tenants adds: time and memory limits, each tenant's budget of
script time, a sandbox, per-tenant script caches, scopes checked on every call, and the declared keys read through
to the origin."""

from __future__ import annotations

import random
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from service.resp.script_budget import ScriptBudget
from service.resp.scripting import EVAL_SCRIPTS_KEPT, ScriptEngine, ScriptError, read_shebang
from tests.service.harness import (
    Cmd,
    RawClient,
    RunningService,
    assert_same_replies,
    running_service,
    write_tenants_file,
)
from tests.tlsutil import PKI

LOCK_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"
RATE_LIMIT = ("local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end "
              "return {n, redis.call('TTL', KEYS[1])}")
RETURN_1_SHA = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"

CASES: dict[str, list[Cmd]] = {
    "lua_to_reply": [
        ("EVAL", "return 1", "0"), ("EVAL", "return 3.99", "0"), ("EVAL", "return -3.5", "0"),
        ("EVAL", "return -0.5", "0"), ("EVAL", "return 2^53", "0"), ("EVAL", "return 1e30", "0"),
        ("EVAL", "return 0/0", "0"), ("EVAL", "return true", "0"), ("EVAL", "return false", "0"),
        ("EVAL", "return nil", "0"), ("EVAL", "", "0"), ("EVAL", "return", "0"), ("EVAL", "return 1, 2", "0"),
        ("EVAL", "return 'a\\r\\nb'", "0"), ("EVAL", "return {1, 2, {3, 'a'}}", "0"),
        ("EVAL", "return {1, nil, 3}", "0"),
        ("EVAL", "return {1, 'two', {ok='x'}, {err='E y'}, true, false}", "0"), ("EVAL", "return {ok='fine'}", "0"),
        ("EVAL", "return {err='bad thing'}", "0"), ("EVAL", "return {err=''}", "0"), ("EVAL", "return {err=5}", "0"),
        ("EVAL", "return {ok=5}", "0"), ("EVAL", "return {1, 2, x=3}", "0"),
        ("EVAL", "local a = {} a.x = 1 return a", "0"),
        ("EVAL", "return {ok='a\\r\\nb'}", "0"), ("EVAL", "local t = {} for i = 1, 100 do t[i] = i end return t", "0"),
        ("EVAL", "return tostring(3.0)", "0"), ("EVAL", "return tostring(1/3)", "0"),
        ("EVAL", "return tonumber('0x10')", "0"),
        ("EVAL", "return string.format('%d-%s %.3f', 5, 'x', 1/3)", "0"), ("EVAL", "return math.floor(-2.5)", "0"),
        ("EVAL", "return table.concat({'a', 'b'}, ',')", "0"), ("EVAL", "return ('x'):upper()", "0"),
        ("EVAL", "return _VERSION", "0"), ("EVAL", "return redis.REDIS_VERSION", "0"),
    ],
    "keys_and_argv": [
        ("EVAL", "return {KEYS[1], ARGV[1], #KEYS, #ARGV}", "1", "a", "b", "c"), ("EVAL", "return KEYS", "1", "a"),
        ("EVAL", "return ARGV", "0", "a", "b"), ("EVAL", "return KEYS[2]", "1", "a", "b"),
        ("EVAL", "return #ARGV[1]", "0", "x" * 1000), ("EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", "1", "bin",
                                                        b"\x00\xff\r\n"),
        ("EVAL", "return redis.call('GET', KEYS[1])", "1", "bin"), ("EVAL", "KEYS[1] = 'z' return KEYS[1]", "1", "a"),
    ],
    "many_keys_and_argv": [  # past the 8000 or so arguments a Lua call's C stack holds
        ("EVAL", "return {#KEYS, #ARGV, KEYS[1], ARGV[20000]}", "0", *(f"a{i}" for i in range(20_000))),
        ("EVAL", "return {#KEYS, #ARGV, KEYS[20000], ARGV[1]}", "20000", *(f"k{i}" for i in range(20_000))),
        ("EVAL", "return {KEYS, ARGV}", "20000", *(f"k{i}" for i in range(20_000)), *(f"a{i}" for i in range(20_000))),
    ],
    "numkeys_errors": [("EVAL", "return 1", "-1"), ("EVAL", "return 1", "2", "a"), ("EVAL", "return 1", "x"),
                       ("EVAL", "return 1", "00"), ("EVAL", "return 1"), ("EVALSHA", "abc"), ("eval", "return 1", "1"),
                       ("EVALSHA", "abc", "0"), ("EVAL", "return (", "0"), ("EVAL", "return (", "-1"),
                       # A SHA that is not 40 characters is NOSCRIPT before numkeys is read; one that is, after.
                       ("EVALSHA", "abc", "5", "a"), ("EVALSHA_RO", "abc", "x"), ("EVALSHA", "f" * 40, "x"),
                       ("EVALSHA", "f" * 40, "5", "a")],
    "calls": [
        ("EVAL", "redis.call('INCRBYFLOAT', KEYS[1], '0.1') return redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])", "1",
         "f", "0.2"), ("EVAL", "return redis.call('SETRANGE', KEYS[1], 2, 'xy')", "1", "f"),
        ("SET", "k", "v"), ("EVAL", "return redis.call('GET', KEYS[1])", "1", "k"),
        ("EVAL", "return redis.call('get', 'missing')", "0"), ("EVAL", "return {redis.call('GET', 'missing')}", "0"),
        ("EVAL", "return type(redis.call('MGET', 'k', 'nope')[2])", "0"),
        ("EVAL", "return redis.call('SET', 'k', 'w')", "0"), ("EVAL", "return redis.call('SET', 'k', 'v').ok", "0"),
        ("EVAL", "return redis.call('SET', 'k', 'x', 'GET')", "0"), ("EVAL", "return redis.call('TYPE', 'k')", "0"),
        ("EVAL", "return redis.call('MSET', 'a', 1, 'b', 2.5)", "0"),
        ("EVAL", "return redis.call('MGET', 'a', 'b', 'c')",
                                                                      "0"),
        ("EVAL", "return redis.call('SET', 'n', 0.1)", "0"), ("GET", "n"),
        ("EVAL", "return redis.call('SET', 'n', 1e20)",
                                                                           "0"),
        ("GET", "n"), ("EVAL", "return redis.call('SET', 'n', 123456789012345)", "0"), ("GET", "n"),
        ("EVAL", "return redis.call('INCRBY', 'c', '5')", "0"), ("EVAL", "return redis.call('INCRBY', 'c', 5)", "0"),
        ("EVAL", "return redis.call('EXISTS', 'k', 'k', 'nope')", "0"), ("EVAL", "return redis.call('DBSIZE')", "0"),
        ("EVAL", "return redis.call('PING')", "0"), ("EVAL", "return redis.call('PING', 'x')", "0"),
        ("EVAL", "return redis.call('ECHO', 'hi')", "0"), ("EVAL", "return redis.call('SELECT', 0)", "0"),
        ("EVAL", "return redis.call('DEL', 'nope')", "0"), ("EVAL", "return redis.call('TIME')[1] > '0'", "0"),
        ("EVAL", "redis.call('SET', KEYS[1], 'x', 'EX', 100) return redis.call('TTL', KEYS[1])", "1", "t"),
    ],
    "call_errors": [
        ("SET", "k", "v"), ("EVAL", "return redis.call('INCR', KEYS[1])", "1", "k"),
        ("EVAL", "\n\nlocal a = 1\nreturn redis.call('INCR', 'k')", "0"),
        ("EVAL", "local function f()\n return redis.call('INCR','k')\nend\n\nreturn f()", "0"),
        ("EVAL", "return redis.call('NOPE')", "0"), ("EVAL", "return redis.call('GET')", "0"),
        ("EVAL", "return redis.call('get', 'a', 'b')", "0"), ("EVAL", "return redis.call()", "0"),
        ("EVAL", "return redis.call('GET', {})", "0"), ("EVAL", "return redis.call('SET', 'z', true)", "0"),
        ("EVAL", "return redis.call('SET', 'z', nil)", "0"), ("EVAL", "return redis.call('INCRBY', 'c', 2.5)", "0"),
        ("EVAL", "return redis.call('EXPIRE', 'x', 'y')", "0"), ("EVAL", "return redis.call('ECHO')", "0"),
        ("EVAL", "return redis.call('MULTI')", "0"), ("EVAL", "return redis.call('EVAL', 'return 1', 0)", "0"),
        ("EVAL", "return redis.call('AUTH', 'x')", "0"), ("EVAL", "return redis.call('WATCH', 'x')", "0"),
        ("EVAL", "return redis.call('SCRIPT', 'FLUSH')", "0"), ("EVAL", "return redis.call('QUIT')", "0"),
        ("EVAL", "return redis.call('HELLO')", "0"), ("EVAL", "return redis.call('CLIENT', 'ID')", "0"),
        ("EVAL", "return redis.call('CONFIG', 'GET', 'x')", "0"),
    ],
    "pcall": [
        ("SET", "k", "v"), ("EVAL", "return redis.pcall('INCR', KEYS[1])", "1", "k"),
        ("EVAL", "local r = redis.pcall('INCR', KEYS[1]); return r['err']", "1", "k"),
        ("EVAL", "return redis.pcall('NOPE')", "0"), ("EVAL", "return redis.pcall('GET')", "0"),
        ("EVAL", "return redis.pcall('SET', 'a')", "0"), ("EVAL", "return {redis.pcall('INCR', 'k')}", "0"),
        ("EVAL", "local ok, e = pcall(function() return redis.call('INCR', 'k') end) return e", "0"),
        ("EVAL", "local ok, e = pcall(function() return redis.call('NOPE') end) return e", "0"),
        ("EVAL", "local ok, err = pcall(redis.call, 'INCR', 'k') return {tostring(ok), err}", "0"),
        ("EVAL", "local ok, e = pcall(function() error('boom') end) return e", "0"),
        ("EVAL", "local ok, e = pcall(function() error({err='X y'}) end) return {e, type(e)}", "0"),
        ("EVAL", "local ok, e = pcall(function() return x end) return e", "0"),
        ("EVAL", "local ok, v = xpcall(function() error('x') end, function(e) return 'handled: ' .. e end) return v",
         "0"),
        ("EVAL", "local ok, v = xpcall(function() return redis.call('INCR','k') end, function(e) return type(e) end) "
                 "return v", "0"),
    ],
    "script_errors": [
        ("EVAL", "error('boom')", "0"), ("EVAL", "\nerror('boom')", "0"), ("EVAL", "error({err='X custom'})", "0"),
        ("EVAL", "error({err='lower'})", "0"), ("EVAL", "return nil + 1", "0"), ("EVAL", "return x", "0"),
        ("EVAL", "x = 1", "0"), ("EVAL", "string.x = 1 return 1", "0"), ("EVAL", "KEYS = 5 return 1", "0"),
        ("EVAL", "rawset(_G, 'y', 1) return y", "0"), ("EVAL", "setmetatable(_G, nil) return 1", "0"),
        ("EVAL", "getmetatable('').__index = {} return 1", "0"), ("EVAL", "return getmetatable('').__index == string",
                                                                   "0"),
        ("EVAL", "return type(os)", "0"), ("EVAL", "return type(debug)", "0"), ("EVAL", "return type(require)", "0"),
        ("EVAL", "return type(setfenv)", "0"), ("EVAL", "return type(getfenv)", "0"),
        ("EVAL", "return type(print)", "0"),
        ("EVAL", "return type(newproxy)", "0"), ("EVAL", "return type(dofile)", "0"),
        ("EVAL", "return type(module)", "0"),
        ("EVAL", "return {type(loadstring), type(load), type(setmetatable), type(unpack), type(_G)}", "0"),
    ],
    "redis_library": [
        ("EVAL", "return redis.error_reply('My err')", "0"), ("EVAL", "return redis.error_reply('lower')", "0"),
        ("EVAL", "return redis.error_reply('-WRONGTYPE custom msg')", "0"),
        ("EVAL", "return redis.error_reply('')", "0"),
        ("EVAL", "return redis.error_reply('-')", "0"), ("EVAL", "return redis.error_reply('a\\r\\nb')", "0"),
        ("EVAL", "return redis.error_reply()", "0"), ("EVAL", "return redis.status_reply('GOOD')", "0"),
        ("EVAL", "return redis.status_reply('a\\nb')", "0"), ("EVAL", "return redis.status_reply(5)", "0"),
        ("EVAL", "return redis.sha1hex('')", "0"), ("EVAL", "return redis.sha1hex('abc')", "0"),
        ("EVAL", "return redis.sha1hex(123)", "0"), ("EVAL", "return redis.sha1hex()", "0"),
        ("EVAL", "redis.setresp()", "0"), ("EVAL", "redis.setresp(4)", "0"),
        ("EVAL", "redis.setresp(2) return redis.call('GET', 'nope')", "0"),
        ("EVAL", "return redis.log(redis.LOG_WARNING, 'hello')", "0"), ("EVAL", "return redis.LOG_WARNING", "0"),
    ],
    "script_cache": [
        ("EVALSHA", RETURN_1_SHA, "0"), ("SCRIPT", "LOAD", "return 1"), ("EVALSHA", RETURN_1_SHA, "0"),
        ("EVALSHA", RETURN_1_SHA.upper(), "0"), ("EVALSHA_RO", RETURN_1_SHA, "0"), ("EVALSHA", RETURN_1_SHA, "1"),
        ("SCRIPT", "EXISTS", RETURN_1_SHA.upper(), "x"), ("SCRIPT", "FLUSH"), ("SCRIPT", "EXISTS", RETURN_1_SHA),
        ("EVALSHA", RETURN_1_SHA, "0"), ("EVAL", "return 1", "0"), ("SCRIPT", "EXISTS", RETURN_1_SHA),
        ("SCRIPT", "FLUSH", "ASYNC"), ("SCRIPT", "flush", "sync"), ("SCRIPT", "FLUSH", "NOPE"),
        ("SCRIPT", "FLUSH", "SYNC", "ASYNC"), ("SCRIPT", "KILL"), ("SCRIPT", "KILL", "x"), ("SCRIPT", "NOPE"),
        ("SCRIPT",), ("SCRIPT", "EXISTS"), ("SCRIPT", "LOAD"), ("SCRIPT", "LOAD", "a", "b"),
        ("SCRIPT", "LOAD", "return ("),
    ],
    "read_only_and_shebang": [
        ("EVAL_RO", "return redis.call('SET', 'a', 'b')", "0"), ("EVAL_RO", "return redis.call('DEL', 'a')", "0"),
        ("EVAL_RO", "return redis.call('GET', 'a')", "0"),
        ("EVAL_RO", "return redis.call('EVAL_RO', 'return 1', 0)", "0"),
        ("EVAL", "#!lua\nreturn 1", "0"), ("EVAL", "#!lua flags=no-writes\nreturn redis.call('SET','a','b')", "0"),
        ("EVAL", "#!lua flags=no-writes\nreturn redis.call('GET','a')", "0"), ("EVAL", "#!python\nreturn 1", "0"),
        ("EVAL", "#!lua flags=bogus\nreturn 1", "0"), ("EVAL", "#!lua foo=bar\nreturn 1", "0"),
        ("EVAL", "#!lua flags=allow-oom,no-cluster\nreturn 2", "0"), ("EVAL", "#!lua\nerror('x')", "0"),
        ("EVAL", "#!lua\nreturn (", "0"), ("EVAL", "#!lua", "0"), ("EVAL", "#!lua flags=\nreturn 3", "0"),
        ("EVAL", "#!  lua\nreturn 1", "0"), ("EVAL", "#!lua flags=a,,b\nreturn 1", "0"),
    ],
    "patterns_clients_use": [
        ("SET", "lock", "token-1"), ("EVAL", LOCK_RELEASE, "1", "lock", "token-2"), ("GET", "lock"),
        ("EVAL", LOCK_RELEASE, "1", "lock", "token-1"), ("GET", "lock"), ("EVAL", RATE_LIMIT, "1", "rl", "60"),
        ("EVAL", RATE_LIMIT, "1", "rl", "60"),
    ],
    "resp3_types": [
        ("EVAL", "return {double=3.5}", "0"), ("EVAL", "return {double=0.1}", "0"), ("EVAL", "return {map={a=1}}", "0"),
        ("EVAL", "return {set={a=true}}", "0"), ("EVAL", "return {big_number='123456789012345678901234567890'}", "0"),
        ("EVAL", "return {verbatim_string={format='txt', string='hello'}}", "0"),
        ("EVAL", "redis.setresp(3) return type(redis.call('COMMAND', 'DOCS', 'get').map)", "0"),
        ("EVAL", "redis.setresp(3) return redis.call('INFO', 'server').verbatim_string.format", "0"),
    ],
    "cjson": [  # errors from a call in a tail position lose their line in Foresight, so these assign first
        ("EVAL", "return cjson.encode({1, 2, 3})", "0"), ("EVAL", "return cjson.encode({})", "0"),
        ("EVAL", "return cjson.encode({a={b={1, 'x', true, false}}})", "0"),
        ("EVAL", "return cjson.encode('a/b\"c\\\\d\\n\\t\\r\\b\\f\\1\\127\\195\\169')", "0"),
        ("EVAL", "return cjson.encode({1/3, 1e20, 123456789012345, -0.0, 0.1})", "0"),
        ("EVAL", "return cjson.encode({[1]=1, [2]=2, [5]=5})", "0"),
        ("EVAL", "return cjson.encode({[1]='a', x='b'})", "0"),
        ("EVAL", "return cjson.encode({[1.5]='a', [-1]='b', [0]='c'})", "0"), ("EVAL", "return cjson.encode(nil)", "0"),
        ("EVAL", "return cjson.encode(redis.call('MGET', 'nope'))", "0"),
        ("EVAL", "return cjson.encode(cjson.null)", "0"),
        ("EVAL", "return cjson.encode({a=1, b=2, c=3, d=4})", "0"),
        ("EVAL", "local r = cjson.encode(0/0) return r", "0"), ("EVAL", "local r = cjson.encode(1/0) return r", "0"),
        ("EVAL", "local r = cjson.encode() return r", "0"),
        ("EVAL", "local r = cjson.encode({[1]=1, [20]=2}) return r", "0"),
        ("EVAL", "local r = cjson.encode({[true]='a'}) return r", "0"),
        ("EVAL", "local r = cjson.encode(function() end) return r", "0"),
        ("EVAL", "local t = {} local c = t for i = 1, 1100 do c[1] = {} c = c[1] end local r = cjson.encode(t) "
                 "return r", "0"),
        ("EVAL", "return cjson.decode('[1,2,3]')", "0"), ("EVAL", "return cjson.decode('{\"a\":1}').a", "0"),
        ("EVAL", "return cjson.decode('\"x\\\\u00e9\\\\n\\\\/\\\\ud83d\\\\ude00\"')", "0"),
        ("EVAL", "return {type(cjson.decode('null')), tostring(cjson.decode('null') == cjson.null)}", "0"),
        ("EVAL", "return {cjson.decode('1.5e3'), cjson.decode('0x10'), cjson.decode('-0'), cjson.decode('01'), "
                 "cjson.decode('1.'), cjson.decode(5)}", "0"),
        ("EVAL", "return cjson.decode(' [ 1 , {\"b\": [true, false, null]} ] ')[2].b[1]", "0"),
        ("EVAL", "local r = cjson.decode('[1,') return r", "0"), ("EVAL", "local r = cjson.decode('') return r", "0"),
        ("EVAL", "local r = cjson.decode('{\"a\":}') return r", "0"),
        ("EVAL", "local r = cjson.decode('tru') return r", "0"),
        ("EVAL", "local r = cjson.decode('-x') return r", "0"), ("EVAL", "local r = cjson.decode('+1') return r", "0"),
        ("EVAL", "local r = cjson.decode('[-]') return r", "0"), ("EVAL", "local r = cjson.decode('9x') return r", "0"),
        ("EVAL", "local r = cjson.decode('[1] x') return r", "0"), ("EVAL", "local r = cjson.decode() return r", "0"),
        ("EVAL", "local r = cjson.decode('{1:2}') return r", "0"),
        ("EVAL", "local r = cjson.decode('{\"a\" 1}') return r", "0"),
        ("EVAL", "local r = cjson.decode('[1 2]') return r", "0"),
        ("EVAL", "local r = cjson.decode('{\"a\":1 \"b\"}') return r",
                                                                   "0"),
        ("EVAL", "local r = cjson.decode({}) return r", "0"),
        ("EVAL", "local r = cjson.decode(string.rep('[', 1001) .. string.rep(']', 1001)) return r", "0"),
        ("EVAL", "return #cjson.decode(string.rep('[', 1000) .. string.rep(']', 1000))", "0"),
        ("EVAL", "cjson.x = 1", "0"), ("EVAL", "return cjson._NAME", "0"),
    ],
    "pattern_functions": [  # Lua's own messages, positions and method-call argument numbers
        ('EVAL', "local r = {('x'):find()", '0'),
        ('EVAL', 'local r = {string.find()} return r', '0'),
        ('EVAL', "local r = {string.find('x', 'x', 'y')", '0'),
        ('EVAL', "local r = {string.gsub('aaa', 'a*a*', 'b', 'z')", '0'),
        ('EVAL', "local r = {('aaa'):gsub('a*a*', {})} return r", '0'),
        ('EVAL', "local r = {string.gsub('abc', '(a*)(b*)', function(x, y) return {} end)} return r", '0'),
        ('EVAL', "local r = {string.gsub('abc', '(a*)(b*)', '%3')", '0'),
        ('EVAL', "return {string.gsub('abc', '(a*)(b*)', '%2%1%%')}", '0'),
        ('EVAL', "local r = {string.find('abc', '(a*(b*)')} return r", '0'),
        ('EVAL', "local r = {string.find('abc', 'a*b*)')", '0'),
        ('EVAL', "local r = {string.find('abc', 'a*b*%f')", '0'),
        ('EVAL', "return {string.find('abc', '(a*)(b*)%2')}", '0'),
        ('EVAL', "return {string.find('abc', '(a*)(b*)%3')}", '0'),
        ('EVAL', "return {string.find('abcabc', '(a*)(b*)', -3)}", '0'),
        ('EVAL', "return {string.find('abc', 'a*b*', 10)}", '0'),
        ('EVAL', "return {string.find('abc', 'a*b*', -10)}", '0'),
        ('EVAL', "return {string.find(12345, '2*3*')}", '0'),
        ('EVAL', "return {string.gsub('abc', '%w*%w*', '%0%0', 2)}", '0'),
        ('EVAL', "return {string.gsub('hello world', '(o)(%s*)', {o='0'})}", '0'),
        ('EVAL', "return {string.gsub('x', 'x*y*', 5)}", '0'),
        ('EVAL', "local t = {} for k, v in string.gmatch('a=1, b=2', '(%w+)%s*=%s*(%w+)')"
                 ' do t[#t+1] = k .. v end return t', '0'),
        ('EVAL', "local ok, e = pcall(string.find, 'abc', 'a*b*(') return e", '0'),
        ('EVAL', 'local ok, e = pcall(string.find) return e', '0'),
        ('EVAL', "return {string.find('a.b', '.', 1, true)}", '0'),
        ('EVAL', "return {string.match('  key = value  ', '^%s*(%S+)%s*=%s*(%S+)%s*$')}", '0'),
        ('EVAL', "return {string.find('aaa', '()a*()')}", '0'),
        ('EVAL', "return {string.gsub('abc', '', '-')}", '0'),
        ('EVAL', "return {string.gsub('abc', 'x*y*', '-')}", '0'),
        ('EVAL', "return {string.find('a\\0b', 'a%zb*c*')}", '0'),
        ('EVAL', "return {string.find('THE (quick) fox', '%f[%a]%a+%f[%A]*.-')}", '0'),
        ('EVAL', "return {string.gsub('f(a(b)c) g(h)', '%b()*', '[]')}", '0'),
    ],
    "in_transactions": [
        ("MULTI",), ("EVAL", "return redis.call('INCR', 'm')", "0"), ("EVAL", "return (", "0"), ("EXEC",),
        ("MULTI",), ("EVAL", "return redis.call('INCR', 'm')", "0"), ("EVAL", "return redis.call('INCR', 'm')", "0"),
        ("EXEC",), ("MULTI",), ("EVAL", "return 1"), ("EXEC",),
    ],
}

RESP3_CASES: dict[str, list[Cmd]] = {  # not `setresp(3) return false`: redis-server 7.0.15 never answers it
    "resp3": [
        ("EVAL", "return nil", "0"), ("EVAL", "return false", "0"), ("EVAL", "return true", "0"),
        ("EVAL", "redis.setresp(3) return true", "0"),
        ("EVAL", "redis.setresp(3) return redis.call('GET', 'missing')", "0"),
        ("EVAL", "redis.setresp(3) return type(redis.call('MGET', 'k', 'nope')[2])", "0"),
        ("EVAL", "redis.setresp(3) return {1, nil, 3}", "0"), ("EVAL", "return {1, false, 3}", "0"),
        ("EVAL", "return {double=3.5}", "0"), ("EVAL", "return {map={a={1, 'x'}}}", "0"),
        ("EVAL", "return {set={a=true}}", "0"), ("EVAL", "return {big_number='123456789012345678901234567890'}", "0"),
        ("EVAL", "return {verbatim_string={format='txt', string='hello'}}", "0"),
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scripts_answer_as_redis_does(case: str, reference: int, foresight: int) -> None:
    assert_same_replies(case, CASES[case], reference, foresight, resp3=False)


@pytest.mark.parametrize("case", sorted(RESP3_CASES))
def test_scripts_answer_as_redis_does_in_resp3(case: str, reference: int, foresight: int) -> None:
    assert_same_replies(case, RESP3_CASES[case], reference, foresight, resp3=True)


PATTERN_PROBE = """
local s, p, how = ARGV[1], ARGV[2], ARGV[3]
local ok, result = pcall(function()
  if how == 'find' then return {string.find(s, p)} end
  if how == 'match' then return {string.match(s, p)} end
  if how == 'gsub' then return {string.gsub(s, p, '<%0%1>')} end
  local found = {}
  for a, b in string.gmatch(s, p) do found[#found + 1] = a; found[#found + 1] = b or false end
  return found
end)
if ok then return result end
return {'error', result}
"""
PATTERN_ITEMS = ["a", "b", ".", "%a", "%d", "%s", "%A", "[ab]", "[^a]", "[a-c1]", "%%", "(", ")", "()", "%b()",
                 "%f[%a]", "%1", "^", "$", "x"]


def _pattern(rng: random.Random) -> str:
    """Random patterns with at least two quantifiers, so that Foresight's Lua matcher (not C's) answers them."""
    parts = [rng.choice(PATTERN_ITEMS) for _ in range(rng.randint(2, 6))]
    for i in rng.sample(range(len(parts)), 2):
        parts[i] += rng.choice("*+-?")
    return "".join(parts)


@pytest.mark.parametrize("seed", range(4))
def test_pattern_functions_answer_as_redis_does(seed: int, reference: int, foresight: int) -> None:
    """string.find, match, gsub and gmatch through Foresight's interruptible matcher, against Redis's C one."""
    rng = random.Random(seed)
    commands: list[Cmd] = [
        ("EVAL", PATTERN_PROBE, "0", "".join(rng.choice("ab1 ()%x") for _ in range(rng.randint(0, 14))),
         _pattern(rng), rng.choice(["find", "match", "gsub", "gmatch"]))
        for _ in range(400)
    ]
    assert_same_replies(f"patterns seed {seed}", commands, reference, foresight, resp3=False)


def test_a_pathological_pattern_is_stopped_by_the_time_limit() -> None:
    """C's matcher would run for hours on this (Redis's does); the sandbox's Lua matcher is stopped in time. Three
    scripts stopped in a row would spend the tenant's script time budget, which is not what this test is about."""
    with running_service(dev=True, script_time_limit_ms=200, script_budget_burst_ms=60_000) as svc:
        client = redis.Redis(port=svc.resp_port)
        for body in ("return string.find(string.rep('a', 20000), string.rep('a*', 12) .. 'b')",
                     "return string.gsub(string.rep('a', 1e6), 'a*b', '')",
                     "for w in string.gmatch(string.rep('a', 5e4), '.-.-b') do end"):
            with pytest.raises(redis.ResponseError, match="script stopped: it ran past the time limit of 200 ms"):
                client.eval(body, 0)
        assert client.eval("return string.find(string.rep('a', 1e6) .. 'b', 'ab')", 0) == 1_000_000


def test_redis_py_lock_and_registered_scripts(foresight: int) -> None:
    """redis-py's Lock runs on Lua (release, extend, reacquire); a registered script survives SCRIPT FLUSH by
    reloading itself on NOSCRIPT."""
    client = redis.Redis(port=foresight)
    client.delete("job-lock", "counter")
    lock = client.lock("job-lock", timeout=5)
    assert lock.acquire(blocking=False)
    assert not client.lock("job-lock", timeout=5).acquire(blocking=False)
    assert lock.extend(10) and 5_000 < client.pttl("job-lock") <= 15_000
    assert lock.reacquire() and client.pttl("job-lock") <= 5_000
    stranger = client.lock("job-lock", timeout=5)
    stranger.local.token = b"not-the-owner"
    with pytest.raises(redis.exceptions.LockNotOwnedError):
        stranger.release()
    lock.release()
    assert not lock.locked()

    add = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert add(keys=["counter"], args=[5]) == 5
    client.script_flush()
    assert add(keys=["counter"], args=[2]) == 7
    with client.pipeline() as pipe:
        pipe.evalsha(add.sha, 1, "counter", 1).eval("return ARGV[1]", 0, "x")
        assert pipe.execute() == [8, b"x"]


def test_watch_sees_a_scripts_write(foresight: int) -> None:
    watcher, writer = redis.Redis(port=foresight), redis.Redis(port=foresight)
    watcher.set("balance", 10)
    with watcher.pipeline() as pipe:
        pipe.watch("balance")
        writer.eval("return redis.call('INCRBY', KEYS[1], 5)", 1, "balance")
        pipe.multi()
        pipe.set("balance", 0)
        with pytest.raises(redis.exceptions.WatchError):
            pipe.execute()
    assert watcher.get("balance") == b"15"


def test_foresight_only_refusals(foresight: int) -> None:
    """Where Foresight refuses what Redis allows, on purpose: a flush waits for its audit record, which a script
    cannot do; coroutines would run without the time limit's hook; and where redis-server has no answer."""
    client = RawClient(foresight)
    assert client.send(("EVAL", "return redis.call('FLUSHDB')", "0")).startswith(
        b"-ERR This Redis command is not allowed from script script: ")
    assert b"nonexistent global variable 'coroutine'" in client.send(("EVAL", "return coroutine", "0"))
    assert client.send(("EVAL", "return loadstring(string.dump(function() return 1 end))", "0")) == b"$-1\r\n"
    assert b"nonexistent global variable 'debug'" in client.send(("EVAL", "return loadstring('return debug')()", "0"))
    assert client.send(("EVAL", "error({})", "0")).startswith(  # redis-server 7.0.15 crashes on this one
        b"-ERR the script raised a table without an err field script: ")
    assert client.send(("EVAL", "error(nil)", "0")).startswith(b"-ERR nil script: ")


@pytest.mark.parametrize("body", [
    "while true do end",
    "while true do pcall(function() while true do end end) end",
    "local ok, e = pcall(function() while true do end end) return e",
    "while true do xpcall(function() while true do end end, function() while true do end end) end",
    "local s = 0 for i = 1, 1e12 do s = s + i end return s",
    "while true do cjson.decode(cjson.encode({1, {2, 'x'}})) end",
])
def test_a_script_past_the_time_limit_is_stopped(body: str) -> None:
    """Every tenant waits while a script runs, so a loop is stopped, however it tries to catch the error."""
    with running_service(dev=True, script_time_limit_ms=100) as svc:
        client = redis.Redis(port=svc.resp_port)
        with pytest.raises(redis.ResponseError, match="script stopped: it ran past the time limit of 100 ms"):
            client.eval(body, 0)
        assert client.eval("return redis.call('SET', 'after', 'ok')", 0) == b"OK"
        assert client.get("after") == b"ok"
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            metrics = http.get("/metrics").text
        assert 'foresight_scripts_stopped_total{tenant="default"} 1.0' in metrics
        assert 'foresight_script_runs_total{tenant="default"} 2.0' in metrics


def test_a_stopped_script_leaves_none_of_its_writes_behind() -> None:
    """Other clients see a script whole or not at all: the writes of one the time limit stops are undone (values,
    deadlines, deletions); a script that fails on its own keeps its writes, as in Redis."""
    with running_service(dev=True, script_time_limit_ms=100) as svc:
        client = redis.Redis(port=svc.resp_port)
        client.set("balance", 10)
        client.set("session", "abc", ex=1000)
        client.set("ttl-less", "x")
        body = ("redis.call('INCRBY', 'balance', 5) redis.call('SET', 'fresh', 'v') redis.call('DEL', 'session') "
                "redis.call('EXPIRE', 'ttl-less', 50) redis.call('MSET', 'balance', 99, 'other', 1) while true do end")
        with pytest.raises(redis.ResponseError, match="time limit of 100 ms; its writes were undone"):
            client.eval(body, 0)
        assert client.mget("balance", "fresh", "other") == [b"10", None, None]
        assert client.get("session") == b"abc" and 990 < client.ttl("session") <= 1000
        assert client.ttl("ttl-less") == -1
        with pytest.raises(redis.ResponseError, match="attempt to perform arithmetic"):
            client.eval("redis.call('INCRBY', 'balance', 5) return nil + 1", 0)
        assert client.get("balance") == b"15"


def test_a_script_past_the_memory_limit_fails_and_the_runtime_recovers() -> None:
    with running_service(dev=True, script_memory_bytes=2 * 1024 * 1024) as svc:
        client = redis.Redis(port=svc.resp_port)
        for body in ("return #string.rep('x', 1e8)", "local t = {} for i = 1, 1e7 do t[i] = i end return #t"):
            with pytest.raises(redis.ResponseError, match="script ran out of memory: the tenant's scripts may use "
                                                          "2097152 bytes"):
                client.eval(body, 0)
            assert client.eval("return #string.rep('x', 1e5)", 0) == 100_000
        memory = client.info("memory")
        assert memory["number_of_cached_scripts"] == 3
        assert 0 < memory["used_memory_lua"] < 2 * 1024 * 1024


def test_declared_keys_read_through_and_undeclared_ones_see_the_cache(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "profile").write_bytes(b"from-origin")
    (origin / "other").write_bytes(b"also-there")
    with running_service(dev=True, origin=str(origin), prefetcher="none") as svc:
        client = redis.Redis(port=svc.resp_port)
        assert client.eval("return redis.call('GET', KEYS[1])", 1, "profile") == b"from-origin"
        assert client.eval("return redis.call('GET', 'other')", 0) is None  # undeclared: not cached, not fetched
        assert client.eval("return redis.call('GET', KEYS[1])", 1, "absent") is None
        assert client.eval("return redis.call('APPEND', KEYS[1], '!')", 1, "other") == len(b"also-there!")
        tenant = svc.state.tenants.get("default")
        assert tenant is not None and tenant.origin_fetches == 3


def test_scripting_can_be_turned_off() -> None:
    with running_service(dev=True, scripting=False) as svc:
        client = redis.Redis(port=svc.resp_port)
        with pytest.raises(redis.ResponseError, match="scripting is turned off on this server"):
            client.eval("return 1", 0)


def test_scripting_can_be_turned_off_for_one_tenant(tmp_path: Path, pki: PKI) -> None:
    tenants = tmp_path / "tenants.json"
    keys = write_tenants_file(tenants, {"untrusted": {"scripting": False}, "trusted": {}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants) as svc:
        def client(tenant: str) -> redis.Redis:
            return redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(pki.ca_cert),
                               password=keys[tenant].secret)

        with pytest.raises(redis.ResponseError, match="scripting is turned off for tenant 'untrusted'"):
            client("untrusted").eval("return 1", 0)
        with pytest.raises(redis.ResponseError, match="scripting is turned off for tenant 'untrusted'"):
            client("untrusted").script_load("return 1")
        assert client("untrusted").script_exists(RETURN_1_SHA) == [False]
        assert client("untrusted").script_flush() is True
        assert svc.state.tenants.get("untrusted").scripts is None  # no runtime was made for it
        assert client("untrusted").set("k", "v") is True
        assert client("trusted").eval("return 1", 0) == 1


def test_scripts_are_atomic_against_other_clients(foresight: int) -> None:
    """Nothing runs between a script's calls: 4 clients x 200 read-modify-write scripts lose no increment."""
    redis.Redis(port=foresight).set("shared", 0)
    body = "local v = tonumber(redis.call('GET', KEYS[1])) redis.call('SET', KEYS[1], v + 1) return v + 1"

    def work() -> None:
        client = redis.Redis(port=foresight)
        for _ in range(200):
            client.eval(body, 1, "shared")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert redis.Redis(port=foresight).get("shared") == b"800"


def test_eval_cache_is_bounded_but_loaded_scripts_stay() -> None:
    engine = ScriptEngine(time_limit_s=1, memory_bytes=8 * 1024 * 1024)
    kept = engine.load(b"return 'kept'", keep=True)
    first = engine.load(b"return 0", keep=False)
    for i in range(1, EVAL_SCRIPTS_KEPT + 1):
        engine.load(b"return %d" % i, keep=False)
    assert engine.find(first.sha) is None
    assert engine.find(kept.sha) is kept
    assert len(engine) == EVAL_SCRIPTS_KEPT + 1


@pytest.mark.parametrize(("body", "error"), [
    (b"#!lua", "ERR Invalid script shebang"),
    (b"#!python\n", "ERR Unexpected engine in script shebang: #!python"),
    (b"#!lua flags=no-writes,bogus\n", "ERR Unexpected flag in script shebang: bogus"),
    (b"#!lua mode=x\n", "ERR Unknown lua shebang option: mode=x"),
])
def test_shebang_errors(body: bytes, error: str) -> None:
    with pytest.raises(ScriptError, match=error):
        read_shebang(body)


def test_shebang_keeps_line_numbers_and_reads_no_writes() -> None:
    assert read_shebang(b"#!lua flags=no-writes\nreturn 1") == (b"\nreturn 1", True)
    assert read_shebang(b"return 1") == (b"return 1", False)


# The tenant's script time budget ------------------------------------------------------------------------------
BUSY_LOOP = "local i = 0 while true do i = i + 1 end"


def _eval_until(client: redis.Redis, body: str, keys: list[str], until: float, pause: float = 0) -> Counter[str]:
    """EVAL `body` again and again until `until`, `pause` seconds apart; the replies counted: ok, BUSY (refused),
    stopped (time limit). After a refusal it waits 10 ms: these threads share the GIL with the service under test."""
    replies: Counter[str] = Counter()
    while time.monotonic() < until:
        try:
            client.eval(body, len(keys), *keys)
            replies["ok"] += 1
        except redis.ResponseError as err:
            text = str(err)
            kind = "BUSY" if text.startswith("BUSY ") else "stopped" if "past the time limit" in text else text
            replies[kind] += 1
            if kind == "BUSY":
                time.sleep(0.01)
        time.sleep(pause)
    return replies


def _get_until(client: redis.Redis, until: float) -> list[float]:
    """GET again and again until `until`: each one's latency, in seconds."""
    latencies = []
    while time.monotonic() < until:
        started = time.perf_counter()
        client.get("k")
        latencies.append(time.perf_counter() - started)
    return latencies


def _error_of(client: redis.Redis, body: str) -> str:
    with pytest.raises(redis.ResponseError) as raised:
        client.eval(body, 0)
    return str(raised.value)


Connect = Callable[[str, int], list[redis.Redis]]


@contextmanager
def _two_tenants(tmp_path: Path, pki: PKI, first: str, second: str) -> Iterator[tuple[RunningService, Connect]]:
    """A service that serves two tenants (dev mode serves one), and what opens logged-in connections of either."""
    keys = write_tenants_file(tmp_path / "tenants.json", {first: {}, second: {}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tmp_path / "tenants.json") as svc:
        def connect(tenant: str, count: int) -> list[redis.Redis]:
            clients = [redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(pki.ca_cert),
                                   password=keys[tenant].secret) for _ in range(count)]
            for client in clients:
                client.ping()  # logged in before any clock starts
            return clients

        yield svc, connect


def test_a_tenant_past_its_script_budget_is_refused_and_other_tenants_stay_fast(tmp_path: Path, pki: PKI) -> None:
    """The audit's attack: one tenant loops a script to the 500 ms time limit on 3 connections. Before the budget
    every script held the loop, and the other tenant's GETs took 0.5-1.5 s each; now the attacker runs about two
    scripts (its burst) and is refused, so nearly all of the other's GETs are served at once."""
    with _two_tenants(tmp_path, pki, "attacker", "victim") as (svc, connect):
        attackers = connect("attacker", 3)
        (victim,) = connect("victim", 1)
        victim.set("k", "v")
        until = time.monotonic() + 4
        with ThreadPoolExecutor(len(attackers)) as pool:
            attacks = [pool.submit(_eval_until, client, BUSY_LOOP, [], until) for client in attackers]
            latencies = sorted(_get_until(victim, until))
            replies = sum((attack.result() for attack in attacks), Counter())
        p99 = latencies[int(len(latencies) * 0.99)]
        assert p99 < 0.1, f"the victim's GET p99 was {p99 * 1000:.0f} ms over {len(latencies)} GETs"
        assert replies["BUSY"] > 0, replies
        # 500 ms of burst, 100 ms a second after it, and the one script admitted last may run to its limit: at
        # most 1.4 s of the 4 s, so 2 scripts (3 with a slow clock), where the loop held throughout would run 8
        assert 1 <= replies["stopped"] <= 3, replies
        attacker = svc.state.tenants.get("attacker")
        assert attacker is not None and attacker.scripts is not None
        assert attacker.scripts.stats.refused == replies["BUSY"]
        tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        metrics = httpx.get(f"{svc.endpoints.http_url}/metrics", verify=tls).text  # a loopback scrape
        assert f'foresight_scripts_refused_total{{tenant="attacker"}} {replies["BUSY"]}.0' in metrics


RATE_LIMIT_KEY = "local n = redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], 60) return n"


def test_short_scripts_are_not_refused_while_another_tenant_spends_its_budget(tmp_path: Path, pki: PKI) -> None:
    """The budget is each tenant's own: one that runs the scripts clients normally run (a rate limiter's INCR and
    EXPIRE), up to 400 a second on 2 connections (what a 500-a-second rate quota lets through, about), is never
    refused, while another tenant's loops are. Scripts like these cost 20-100 us each, so 400 a second spend a
    fraction of the 100 ms a second the budget earns."""
    with _two_tenants(tmp_path, pki, "looper", "limiter") as (_, connect):
        loopers, limiters = connect("looper", 2), connect("limiter", 2)
        until = time.monotonic() + 3
        with ThreadPoolExecutor(4) as pool:
            loops = [pool.submit(_eval_until, client, BUSY_LOOP, [], until) for client in loopers]
            limits = [pool.submit(_eval_until, client, RATE_LIMIT_KEY, [f"rl{i}"], until, 0.005)
                      for i, client in enumerate(limiters)]
            looped = sum((loop.result() for loop in loops), Counter())
            limited = sum((limit.result() for limit in limits), Counter())
    assert looped["BUSY"] > 0, looped
    assert set(limited) == {"ok"} and limited["ok"] > 100, limited


def test_the_script_budget_refills() -> None:
    """Spent, the budget refuses every script, short ones and compiles too, and says when to retry; by then it has
    refilled enough to run again."""
    with running_service(dev=True, script_time_limit_ms=100) as svc:
        client = redis.Redis(port=svc.resp_port)
        replies = [_error_of(client, BUSY_LOOP)]
        while not replies[-1].startswith("BUSY ") and len(replies) < 20:  # 100 ms each: spent after 5 or 6
            replies.append(_error_of(client, BUSY_LOOP))
        refusal = replies.pop()
        assert refusal.startswith("BUSY "), f"20 scripts of 100 ms each were never refused: {refusal}"
        assert all("past the time limit of 100 ms" in reply for reply in replies), replies
        assert "used their share of the server's time (100 ms a second, 500 ms at once)" in refusal
        found = re.search(r"retry in (\d+) ms$", refusal)
        assert found is not None, refusal
        retry_ms = int(found.group(1))
        assert 0 < retry_ms <= 1500  # the debt is at most about one 100 ms script, repaid at 100 ms a second
        with pytest.raises(redis.ResponseError, match=r"^BUSY "):
            client.eval("return 1", 0)
        with pytest.raises(redis.ResponseError, match=r"^BUSY "):
            client.script_load("return 'not compiled yet'")
        time.sleep(retry_ms / 1000 + 0.05)
        assert client.eval("return 1", 0) == 1


def test_the_script_budget_lends_one_script_and_refills_at_its_rate() -> None:
    """The bucket's arithmetic on a clock of its own: a full bucket, a script admitted with little left that runs
    on into debt, the wait the refusal names, no refill past the burst, and a pause after the bucket empties."""
    budget = ScriptBudget(0.0, refill_per_s=0.1, burst_s=0.5)
    assert budget.refusal(0.0) is None
    budget.charge(0.0, 0.4)  # 400 ms of a full 500 ms bucket: 100 ms left
    assert budget.refusal(0.4) is None
    budget.charge(0.4, 0.9)  # admitted with 100 ms left, it ran 500 ms: 100 + 50 earned meanwhile - 500 = -350 ms
    refusal = budget.refusal(0.9)
    assert refusal is not None and refusal.startswith("BUSY ")
    found = re.search(r"retry in (\d+) ms$", refusal)
    assert found is not None and 3600 <= int(found.group(1)) <= 3601  # back to the 10 ms a script needs
    assert budget.refusal(0.9 + 3.59) is not None
    assert budget.refusal(0.9 + 3.61) is None
    budget.charge(10.0, 10.5)  # idle for 5.5 s, the bucket held 500 ms (not 560); this script took all of it
    refusal = budget.refusal(10.5)  # and the next one waits for 10 ms of budget, not merely for any
    assert refusal is not None and refusal.endswith("retry in 100 ms")


def test_a_refused_script_reads_nothing_from_the_origin(tmp_path: Path) -> None:
    """The budget is asked before a script's missing keys are read through: a tenant whose scripts are refused
    cannot make the server read its origin for them either."""
    (tmp_path / "report").write_bytes(b"from the origin")
    with running_service(dev=True, origin=str(tmp_path), script_time_limit_ms=100, script_budget_burst_ms=50) as svc:
        client = redis.Redis(port=svc.resp_port)
        sha = client.script_load("return redis.call('GET', KEYS[1])")  # compiled: nothing left to refuse at load
        assert "past the time limit" in _error_of(client, BUSY_LOOP)  # 100 ms of a 50 ms burst: in debt
        with pytest.raises(redis.ResponseError, match=r"^BUSY "):
            client.evalsha(sha, 1, "report")
        tenant = svc.state.tenants.get("default")
        assert tenant is not None and tenant.origin_fetches == 0
        assert client.get("report") == b"from the origin"  # the key was there to read all along
