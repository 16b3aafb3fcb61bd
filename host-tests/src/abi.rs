//! The host side of the proxy-wasm ABI 0.2.1 (`env::proxy_*`) and the WASI calls a proxy-wasm
//! module may import (`wasi_snapshot_preview1::*`), as Envoy behaves for each: statuses,
//! lower-cased header names, buffers readable only in their callback, callouts answered later.
//! Every call is written to the transcript.

use std::time::Duration;

use rand_core::RngCore;
use wasmtime::{Caller, Extern, Linker, Memory, Result};

use crate::state::{
    buffer_type_name, deserialize_map, map_type_name, serialize_map, status, PendingCallout, State,
};
use crate::types::{Callout, Headers, LogLevel, LogLine, Metric, MetricKind, Reply};

type C<'a> = Caller<'a, State>;

/// WASI errno values used here.
mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOSYS: i32 = 52;
    pub const NOTSUP: i32 = 58;
    pub const SPIPE: i32 = 70;
}

/// Longest value printed in the transcript before it is cut.
const SHOW: usize = 160;

pub fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() <= SHOW {
        format!("{s:?}")
    } else {
        let mut cut = SHOW;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{:?}…({} bytes)", &s[..cut], bytes.len())
    }
}

fn show_map(m: &[(String, String)]) -> String {
    let inner: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k}: {}", show(v.as_bytes())))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

fn memory(c: &mut C<'_>) -> Result<Memory> {
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => wasmtime::bail!("the module exports no memory"),
    }
}

/// Reads `len` bytes at `ptr`; `None` when out of bounds.
fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Option<Vec<u8>>> {
    let m = memory(c)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    Ok(m.data(&*c)
        .get(ptr..ptr.saturating_add(len))
        .map(<[u8]>::to_vec))
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<bool> {
    let m = memory(c)?;
    let ptr = ptr as u32 as usize;
    match m
        .data_mut(&mut *c)
        .get_mut(ptr..ptr.saturating_add(bytes.len()))
    {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            Ok(true)
        }
        None => Ok(false),
    }
}

fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> Result<bool> {
    write(c, ptr, &v.to_le_bytes())
}

fn write_u64(c: &mut C<'_>, ptr: i32, v: u64) -> Result<bool> {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates (`proxy_on_memory_allocate`, else
/// `malloc`) and stores pointer and size at `ptr_out` / `size_out`.
fn return_bytes(c: &mut C<'_>, bytes: &[u8], ptr_out: i32, size_out: i32) -> Result<i32> {
    let addr = if bytes.is_empty() {
        0
    } else {
        let alloc = c
            .get_export("proxy_on_memory_allocate")
            .or_else(|| c.get_export("malloc"))
            .and_then(Extern::into_func);
        let Some(alloc) = alloc else {
            wasmtime::bail!("the module exports neither proxy_on_memory_allocate nor malloc");
        };
        let alloc = alloc.typed::<i32, i32>(&*c)?;
        let addr = alloc.call(&mut *c, bytes.len() as i32)?;
        if addr == 0 {
            wasmtime::bail!(
                "the module's allocator returned 0 for {} bytes",
                bytes.len()
            );
        }
        if !write(c, addr, bytes)? {
            return Ok(status::INVALID_MEMORY_ACCESS);
        }
        addr
    };
    if !write_u32(c, ptr_out, addr as u32)? || !write_u32(c, size_out, bytes.len() as u32)? {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

macro_rules! read_or {
    ($c:expr, $ptr:expr, $len:expr, $ret:expr) => {
        match read($c, $ptr, $len)? {
            Some(b) => b,
            None => {
                $c.data_mut().note(format!(
                    "  ! invalid memory access reading {} bytes at {}",
                    $len, $ptr
                ));
                return Ok($ret);
            }
        }
    };
}

fn note(c: &mut C<'_>, line: String) {
    c.data_mut().note(line);
}

fn lower(k: &str) -> String {
    k.to_ascii_lowercase()
}

/// `OK` when `v` could be stored at `ptr`, else `INVALID_MEMORY_ACCESS`.
fn store_u32(c: &mut C<'_>, ptr: i32, v: u32) -> Result<i32> {
    Ok(if write_u32(c, ptr, v)? {
        status::OK
    } else {
        status::INVALID_MEMORY_ACCESS
    })
}

/// `OK` when `v` could be stored at `ptr`, else `INVALID_MEMORY_ACCESS`.
fn store_u64(c: &mut C<'_>, ptr: i32, v: u64) -> Result<i32> {
    Ok(if write_u64(c, ptr, v)? {
        status::OK
    } else {
        status::INVALID_MEMORY_ACCESS
    })
}

/// The WASI errno of a write to module memory: `SUCCESS`, or `FAULT` when out of bounds.
fn wasi_written(ok: bool) -> i32 {
    if ok {
        errno::SUCCESS
    } else {
        errno::FAULT
    }
}

/// Ends a getter: notes `{call} = {shown}` and hands the bytes to the module, or notes
/// `{call} = status {s}` and returns `s`.
fn reply_bytes(
    c: &mut C<'_>,
    call: String,
    got: std::result::Result<(String, Vec<u8>), i32>,
    ptr_out: i32,
    size_out: i32,
) -> Result<i32> {
    match got {
        Ok((shown, bytes)) => {
            note(c, format!("  ← {call} = {shown}"));
            return_bytes(c, &bytes, ptr_out, size_out)
        }
        Err(s) => {
            note(c, format!("  ← {call} = status {s}"));
            Ok(s)
        }
    }
}

/// Applies `edit` to header map `t`: `OK`, or the status when the map is not available.
fn edit_map(c: &mut C<'_>, t: i32, edit: impl FnOnce(&mut Vec<(String, String)>)) -> Result<i32> {
    Ok(match c.data_mut().map_mut(t) {
        Ok(m) => {
            edit(m);
            status::OK
        }
        Err(s) => s,
    })
}

/// Reads the header name at `key` (as is, or lower-cased) for a `proxy_*_header_map_value`
/// call; `None` (noted) when out of bounds.
fn read_key(c: &mut C<'_>, (ptr, len): (i32, i32), lower_case: bool) -> Result<Option<String>> {
    let key = read_or!(c, ptr, len, None);
    let key = String::from_utf8_lossy(&key);
    Ok(Some(if lower_case {
        lower(&key)
    } else {
        key.into_owned()
    }))
}

/// `proxy_add_header_map_value` and `proxy_replace_header_map_value`: reads the name
/// (lower-cased) and the value, notes the call, then lets `edit` apply them to header map `t`.
fn set_header_value(
    c: &mut C<'_>,
    call: &str,
    t: i32,
    key: (i32, i32),
    (vp, vl): (i32, i32),
    edit: impl FnOnce(&mut Vec<(String, String)>, String, String),
) -> Result<i32> {
    let Some(key) = read_key(c, key, true)? else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let val = read_or!(c, vp, vl, status::INVALID_MEMORY_ACCESS);
    let val = String::from_utf8_lossy(&val).into_owned();
    note(
        c,
        format!(
            "  ← {call}({}, {key:?}, {})",
            map_type_name(t),
            show(val.as_bytes())
        ),
    );
    edit_map(c, t, |m| edit(m, key, val))
}

/// Every host function this fake Envoy offers, as `module::name`.
pub fn define(linker: &mut Linker<State>) -> Result<()> {
    define_env(linker)?;
    define_wasi(linker)?;
    Ok(())
}

fn define_env(l: &mut Linker<State>) -> Result<()> {
    const E: &str = "env";

    // --- logging
    l.func_wrap(
        E,
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| {
            let msg = read_or!(&mut c, ptr, len, status::INVALID_MEMORY_ACCESS);
            let Some(level) = LogLevel::from_i32(level) else {
                note(
                    &mut c,
                    format!("  ← proxy_log(level={level}) = BadArgument"),
                );
                return Ok(status::BAD_ARGUMENT);
            };
            let message = String::from_utf8_lossy(&msg).into_owned();
            note(&mut c, format!("  ← proxy_log({level:?}, {})", show(&msg)));
            c.data_mut().logs.push(LogLine { level, message });
            Ok(status::OK)
        },
    )?;
    l.func_wrap(E, "proxy_get_log_level", |mut c: C<'_>, out: i32| {
        let level = c.data().log_level as u32;
        note(&mut c, format!("  ← proxy_get_log_level() = {level}"));
        store_u32(&mut c, out, level)
    })?;

    // --- time
    l.func_wrap(
        E,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, out: i32| {
            let now = c.data().now_ns;
            note(
                &mut c,
                format!("  ← proxy_get_current_time_nanoseconds() = {now}"),
            );
            store_u64(&mut c, out, now)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| {
            let st = c.data_mut();
            st.tick_period_ms = ms as u32;
            st.last_tick_ns = st.now_ns;
            note(
                &mut c,
                format!("  ← proxy_set_tick_period_milliseconds({})", ms as u32),
            );
            Ok(status::OK)
        },
    )?;

    // --- buffers
    l.func_wrap(
        E,
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, t: i32, start: i32, max: i32, ptr_out: i32, size_out: i32| {
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            let got = c.data().buffer(t).map(|b| {
                let from = start.min(b.len());
                let to = from.saturating_add(max).min(b.len());
                (show(&b[from..to]), b[from..to].to_vec())
            });
            let call = format!(
                "proxy_get_buffer_bytes({}, {start}, {max})",
                buffer_type_name(t)
            );
            reply_bytes(&mut c, call, got, ptr_out, size_out)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_buffer_status",
        |mut c: C<'_>, t: i32, size_out: i32, flags_out: i32| {
            let len = c.data().buffer(t).map(|b| b.len());
            note(
                &mut c,
                format!(
                    "  ← proxy_get_buffer_status({}) = {len:?}",
                    buffer_type_name(t)
                ),
            );
            match len {
                Ok(n) => {
                    if !write_u32(&mut c, size_out, n as u32)? || !write_u32(&mut c, flags_out, 0)?
                    {
                        return Ok(status::INVALID_MEMORY_ACCESS);
                    }
                    Ok(status::OK)
                }
                Err(s) => Ok(s),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, t: i32, start: i32, size: i32, ptr: i32, len: i32| {
            let data = read_or!(&mut c, ptr, len, status::INVALID_MEMORY_ACCESS);
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            let r = match c.data_mut().buffer_mut(t) {
                Ok(buf) => {
                    let from = start.min(buf.len());
                    let to = from.saturating_add(size).min(buf.len());
                    buf.splice(from..to, data.iter().copied());
                    status::OK
                }
                Err(s) => s,
            };
            note(
                &mut c,
                format!(
                    "  ← proxy_set_buffer_bytes({}, {start}, {size}, {}) = status {r}",
                    buffer_type_name(t),
                    show(&data)
                ),
            );
            Ok(r)
        },
    )?;

    // --- header maps
    l.func_wrap(
        E,
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, t: i32, ptr_out: i32, size_out: i32| {
            let got = c.data().map(t).map(|m| (show_map(m), serialize_map(m)));
            let call = format!("proxy_get_header_map_pairs({})", map_type_name(t));
            reply_bytes(&mut c, call, got, ptr_out, size_out)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_header_map_size",
        |mut c: C<'_>, t: i32, size_out: i32| {
            let size = c.data().map(t).map(|m| serialize_map(m).len());
            note(
                &mut c,
                format!(
                    "  ← proxy_get_header_map_size({}) = {size:?}",
                    map_type_name(t)
                ),
            );
            match size {
                Ok(n) => store_u32(&mut c, size_out, n as u32),
                Err(s) => Ok(s),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, t: i32, ptr: i32, len: i32| {
            let bytes = read_or!(&mut c, ptr, len, status::INVALID_MEMORY_ACCESS);
            let Some(pairs) = deserialize_map(&bytes) else {
                note(
                    &mut c,
                    format!(
                        "  ← proxy_set_header_map_pairs({}) = malformed",
                        map_type_name(t)
                    ),
                );
                return Ok(status::SERIALIZATION_FAILURE);
            };
            let pairs: Vec<(String, String)> =
                pairs.into_iter().map(|(k, v)| (lower(&k), v)).collect();
            note(
                &mut c,
                format!(
                    "  ← proxy_set_header_map_pairs({}, {})",
                    map_type_name(t),
                    show_map(&pairs)
                ),
            );
            edit_map(&mut c, t, |m| *m = pairs)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_get_header_map_value",
        |mut c: C<'_>, t: i32, kp: i32, kl: i32, ptr_out: i32, size_out: i32| {
            let Some(key) = read_key(&mut c, (kp, kl), false)? else {
                return Ok(status::INVALID_MEMORY_ACCESS);
            };
            let found = c.data().map(t).map(|m| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&key))
                    .map(|(_, v)| (show(v.as_bytes()), v.clone().into_bytes()))
            });
            let call = format!("proxy_get_header_map_value({}, {key:?})", map_type_name(t));
            let Some(got) = found.transpose() else {
                note(&mut c, format!("  ← {call} = NotFound"));
                return Ok(status::NOT_FOUND);
            };
            reply_bytes(&mut c, call, got, ptr_out, size_out)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_add_header_map_value",
        |mut c: C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            let call = "proxy_add_header_map_value";
            set_header_value(&mut c, call, t, (kp, kl), (vp, vl), |m, key, val| {
                m.push((key, val))
            })
        },
    )?;
    l.func_wrap(
        E,
        "proxy_replace_header_map_value",
        |mut c: C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            let call = "proxy_replace_header_map_value";
            set_header_value(&mut c, call, t, (kp, kl), (vp, vl), |m, key, val| {
                // Envoy's setCopy: the first occurrence takes the value, the others go.
                match m.iter().position(|(k, _)| k.eq_ignore_ascii_case(&key)) {
                    Some(i) => {
                        m[i] = (key.clone(), val);
                        let mut j = 0;
                        m.retain(|(k, _)| {
                            let keep = j <= i || !k.eq_ignore_ascii_case(&key);
                            j += 1;
                            keep
                        });
                    }
                    None => m.push((key, val)),
                }
            })
        },
    )?;
    l.func_wrap(
        E,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, t: i32, kp: i32, kl: i32| {
            let Some(key) = read_key(&mut c, (kp, kl), false)? else {
                return Ok(status::INVALID_MEMORY_ACCESS);
            };
            note(
                &mut c,
                format!(
                    "  ← proxy_remove_header_map_value({}, {key:?})",
                    map_type_name(t)
                ),
            );
            edit_map(&mut c, t, |m| {
                m.retain(|(k, _)| !k.eq_ignore_ascii_case(&key))
            })
        },
    )?;

    // --- properties
    l.func_wrap(
        E,
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, ptr_out: i32, size_out: i32| {
            let path = read_or!(&mut c, pp, pl, status::INVALID_MEMORY_ACCESS);
            let v = c.data().properties.get(&path).cloned();
            note(
                &mut c,
                format!(
                    "  ← proxy_get_property({}) = {}",
                    show(&path),
                    v.as_deref().map(show).unwrap_or_else(|| "NotFound".into())
                ),
            );
            match v {
                Some(v) => return_bytes(&mut c, &v, ptr_out, size_out),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| {
            let path = read_or!(&mut c, pp, pl, status::INVALID_MEMORY_ACCESS);
            let val = read_or!(&mut c, vp, vl, status::INVALID_MEMORY_ACCESS);
            note(
                &mut c,
                format!("  ← proxy_set_property({}, {})", show(&path), show(&val)),
            );
            c.data_mut().properties.insert(path, val);
            Ok(status::OK)
        },
    )?;

    // --- shared data
    l.func_wrap(
        E,
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, ptr_out: i32, size_out: i32, cas_out: i32| {
            let key = read_or!(&mut c, kp, kl, status::INVALID_MEMORY_ACCESS);
            let key = String::from_utf8_lossy(&key).into_owned();
            let v = c.data().shared_data.get(&key).cloned();
            note(
                &mut c,
                format!(
                    "  ← proxy_get_shared_data({key:?}) = {}",
                    v.as_ref()
                        .map(|(v, cas)| format!("{} cas {cas}", show(v)))
                        .unwrap_or_else(|| "NotFound".into())
                ),
            );
            match v {
                Some((v, cas)) => {
                    if !write_u32(&mut c, cas_out, cas)? {
                        return Ok(status::INVALID_MEMORY_ACCESS);
                    }
                    return_bytes(&mut c, &v, ptr_out, size_out)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| {
            let key = read_or!(&mut c, kp, kl, status::INVALID_MEMORY_ACCESS);
            let val = read_or!(&mut c, vp, vl, status::INVALID_MEMORY_ACCESS);
            let key = String::from_utf8_lossy(&key).into_owned();
            let cas = cas as u32;
            let st = c.data_mut();
            let current = st.shared_data.get(&key).map(|(_, c)| *c);
            let r = match current {
                Some(cur) if cas != 0 && cas != cur => status::CAS_MISMATCH,
                _ => {
                    let next = current.unwrap_or(0).wrapping_add(1).max(1);
                    st.shared_data.insert(key.clone(), (val.clone(), next));
                    status::OK
                }
            };
            note(
                &mut c,
                format!(
                    "  ← proxy_set_shared_data({key:?}, {}, cas {cas}) = status {r}",
                    show(&val)
                ),
            );
            Ok(r)
        },
    )?;

    // --- shared queues (one VM: a queue is only visible to itself)
    l.func_wrap(
        E,
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, id_out: i32| {
            let name = read_or!(&mut c, np, nl, status::INVALID_MEMORY_ACCESS);
            let name = String::from_utf8_lossy(&name).into_owned();
            let st = c.data_mut();
            let id = match st.queues.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    st.queues.push((name.clone(), Default::default()));
                    st.queues.len() - 1
                }
            } as u32
                + 1;
            note(
                &mut c,
                format!("  ← proxy_register_shared_queue({name:?}) = {id}"),
            );
            store_u32(&mut c, id_out, id)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, id_out: i32| {
            let _vm = read_or!(&mut c, vp, vl, status::INVALID_MEMORY_ACCESS);
            let name = read_or!(&mut c, np, nl, status::INVALID_MEMORY_ACCESS);
            let name = String::from_utf8_lossy(&name).into_owned();
            let id = c.data().queues.iter().position(|(n, _)| *n == name);
            note(
                &mut c,
                format!("  ← proxy_resolve_shared_queue({name:?}) = {id:?}"),
            );
            match id {
                Some(i) => store_u32(&mut c, id_out, i as u32 + 1),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ptr_out: i32, size_out: i32| {
            let idx = (id as u32 as usize).wrapping_sub(1);
            let item = c.data_mut().queues.get_mut(idx).map(|(_, q)| q.pop_front());
            note(
                &mut c,
                format!("  ← proxy_dequeue_shared_queue({id}) = {item:?}"),
            );
            match item {
                None => Ok(status::NOT_FOUND),
                Some(None) => Ok(status::EMPTY),
                Some(Some(v)) => return_bytes(&mut c, &v, ptr_out, size_out),
            }
        },
    )?;
    l.func_wrap(
        E,
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, vp: i32, vl: i32| {
            let val = read_or!(&mut c, vp, vl, status::INVALID_MEMORY_ACCESS);
            let idx = (id as u32 as usize).wrapping_sub(1);
            let ok = match c.data_mut().queues.get_mut(idx) {
                Some((_, q)) => {
                    q.push_back(val.clone());
                    true
                }
                None => false,
            };
            note(
                &mut c,
                format!("  ← proxy_enqueue_shared_queue({id}, {})", show(&val)),
            );
            Ok(if ok { status::OK } else { status::NOT_FOUND })
        },
    )?;

    // --- stream control
    l.func_wrap(E, "proxy_continue_stream", |mut c: C<'_>, t: i32| {
        Ok(continue_stream(&mut c, t, "proxy_continue_stream"))
    })?;
    l.func_wrap(E, "proxy_continue_request", |mut c: C<'_>| {
        Ok(continue_stream(&mut c, 0, "proxy_continue_request"))
    })?;
    l.func_wrap(E, "proxy_continue_response", |mut c: C<'_>| {
        Ok(continue_stream(&mut c, 1, "proxy_continue_response"))
    })?;
    l.func_wrap(E, "proxy_close_stream", |mut c: C<'_>, t: i32| {
        let r = match (t, c.data_mut().stream_mut()) {
            (0 | 1, Some(s)) => {
                s.reset = true;
                status::OK
            }
            (0..=3, _) => status::BAD_ARGUMENT,
            _ => status::BAD_ARGUMENT,
        };
        note(&mut c, format!("  ← proxy_close_stream({t}) = status {r}"));
        Ok(r)
    })?;
    l.func_wrap(E, "proxy_clear_route_cache", |mut c: C<'_>| {
        note(&mut c, "  ← proxy_clear_route_cache()".into());
        Ok(status::OK)
    })?;
    l.func_wrap(
        E,
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32| {
            let details = read_or!(&mut c, dp, dl, status::INVALID_MEMORY_ACCESS);
            let body = read_or!(&mut c, bp, bl, status::INVALID_MEMORY_ACCESS);
            let hbytes = read_or!(&mut c, hp, hl, status::INVALID_MEMORY_ACCESS);
            let Some(headers) = deserialize_map(&hbytes) else {
                note(
                    &mut c,
                    "  ← proxy_send_local_response(malformed headers)".into(),
                );
                return Ok(status::SERIALIZATION_FAILURE);
            };
            note(
                &mut c,
                format!(
                    "  ← proxy_send_local_response({}, headers {}, body {}, grpc {grpc})",
                    code as u32,
                    show_map(&headers),
                    show(&body)
                ),
            );
            let reply = Reply {
                status: code as u32,
                headers: Headers(headers),
                body,
                details: String::from_utf8_lossy(&details).into_owned(),
            };
            let Some(s) = c.data_mut().stream_mut() else {
                note(&mut c, "    (not in an HTTP stream: BadArgument)".into());
                return Ok(status::BAD_ARGUMENT);
            };
            if s.local_reply.is_some() {
                note(
                    &mut c,
                    "    (a local reply was already sent: BadArgument)".into(),
                );
                return Ok(status::BAD_ARGUMENT);
            }
            s.local_reply = Some(reply);
            Ok(status::OK)
        },
    )?;

    // --- HTTP callouts
    l.func_wrap(
        E,
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout_ms: i32,
         token_out: i32| {
            let cluster = read_or!(&mut c, up, ul, status::INVALID_MEMORY_ACCESS);
            let hbytes = read_or!(&mut c, hp, hl, status::INVALID_MEMORY_ACCESS);
            let body = read_or!(&mut c, bp, bl, status::INVALID_MEMORY_ACCESS);
            let tbytes = read_or!(&mut c, tp, tl, status::INVALID_MEMORY_ACCESS);
            let cluster = String::from_utf8_lossy(&cluster).into_owned();
            let (Some(headers), Some(trailers)) = (deserialize_map(&hbytes), deserialize_map(&tbytes))
            else {
                note(&mut c, format!("  ← proxy_http_call({cluster:?}) = malformed headers"));
                return Ok(status::BAD_ARGUMENT);
            };
            let headers = Headers(headers.into_iter().map(|(k, v)| (lower(&k), v)).collect());
            let st = c.data_mut();
            // Envoy refuses a call without :method, :path and :authority, or to an unknown cluster.
            let missing: Vec<&str> = [":method", ":path", ":authority"]
                .into_iter()
                .filter(|h| headers.get(h).is_none_or(str::is_empty))
                .collect();
            let unknown_cluster = st.clusters.as_ref().is_some_and(|cl| !cl.contains(&cluster));
            if !missing.is_empty() || unknown_cluster {
                let why = if unknown_cluster {
                    format!("unknown cluster {cluster:?}")
                } else {
                    format!("missing {}", missing.join(", "))
                };
                note(&mut c, format!("  ← proxy_http_call({cluster:?}, {}) = BadArgument ({why})", show_map(&headers.0)));
                return Ok(status::BAD_ARGUMENT);
            }
            let token = st.next_token;
            st.next_token += 1;
            let timeout = Duration::from_millis(timeout_ms as u32 as u64);
            let callout = Callout {
                token,
                context_id: st.effective,
                cluster: cluster.clone(),
                headers,
                body,
                trailers: Headers(trailers),
                timeout,
            };
            let deadline = st.deadline_for(timeout);
            let line = format!(
                "  ← proxy_http_call({cluster:?}, {}, body {}, timeout {}ms) = token {token} (context {})",
                show_map(&callout.headers.0),
                show(&callout.body),
                timeout_ms as u32,
                callout.context_id
            );
            st.callouts.push(PendingCallout { callout, deadline });
            note(&mut c, line);
            store_u32(&mut c, token_out, token)
        },
    )?;

    // --- gRPC: not offered by this host
    l.func_wrap(
        E,
        "proxy_grpc_call",
        |mut c: C<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| {
            note(&mut c, "  ← proxy_grpc_call(..) = Unimplemented".into());
            Ok(status::UNIMPLEMENTED)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_grpc_stream",
        |mut c: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            note(&mut c, "  ← proxy_grpc_stream(..) = Unimplemented".into());
            Ok(status::UNIMPLEMENTED)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_grpc_send",
        |mut c: C<'_>, _: i32, _: i32, _: i32, _: i32| {
            note(&mut c, "  ← proxy_grpc_send(..) = Unimplemented".into());
            Ok(status::UNIMPLEMENTED)
        },
    )?;
    l.func_wrap(E, "proxy_grpc_cancel", |mut c: C<'_>, _: i32| {
        note(&mut c, "  ← proxy_grpc_cancel(..) = Unimplemented".into());
        Ok(status::UNIMPLEMENTED)
    })?;
    l.func_wrap(E, "proxy_grpc_close", |mut c: C<'_>, _: i32| {
        note(&mut c, "  ← proxy_grpc_close(..) = Unimplemented".into());
        Ok(status::UNIMPLEMENTED)
    })?;
    l.func_wrap(
        E,
        "proxy_get_status",
        |mut c: C<'_>, _: i32, _: i32, _: i32| {
            note(&mut c, "  ← proxy_get_status(..) = Unimplemented".into());
            Ok(status::UNIMPLEMENTED)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: i32, nl: i32, _: i32, _: i32, _: i32, _: i32| {
            let name = read_or!(&mut c, np, nl, status::INVALID_MEMORY_ACCESS);
            note(
                &mut c,
                format!(
                    "  ← proxy_call_foreign_function({}) = NotFound",
                    show(&name)
                ),
            );
            Ok(status::NOT_FOUND)
        },
    )?;

    // --- contexts
    l.func_wrap(E, "proxy_set_effective_context", |mut c: C<'_>, id: i32| {
        let id = id as u32;
        let st = c.data_mut();
        let known = id == st.root_id || st.streams.contains_key(&id);
        if known {
            st.effective = id;
        }
        let r = if known {
            status::OK
        } else {
            status::BAD_ARGUMENT
        };
        note(
            &mut c,
            format!("  ← proxy_set_effective_context({id}) = status {r}"),
        );
        Ok(r)
    })?;
    l.func_wrap(E, "proxy_done", |mut c: C<'_>| {
        c.data_mut().done_called = true;
        note(&mut c, "  ← proxy_done()".into());
        Ok(status::OK)
    })?;

    // --- metrics
    l.func_wrap(
        E,
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, id_out: i32| {
            let name = read_or!(&mut c, np, nl, status::INVALID_MEMORY_ACCESS);
            let name = String::from_utf8_lossy(&name).into_owned();
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Ok(status::BAD_ARGUMENT),
            };
            let st = c.data_mut();
            let id = match st.metrics.iter().position(|m| m.name == name) {
                Some(i) => i,
                None => {
                    st.metrics.push(Metric {
                        name: name.clone(),
                        kind,
                        value: 0,
                    });
                    st.metrics.len() - 1
                }
            } as u32
                + 1;
            note(
                &mut c,
                format!("  ← proxy_define_metric({kind:?}, {name:?}) = {id}"),
            );
            store_u32(&mut c, id_out, id)
        },
    )?;
    l.func_wrap(
        E,
        "proxy_increment_metric",
        |mut c: C<'_>, id: i32, by: i64| {
            let idx = (id as u32 as usize).wrapping_sub(1);
            let r = match c.data_mut().metrics.get_mut(idx) {
                Some(m) if m.kind == MetricKind::Histogram => status::BAD_ARGUMENT,
                Some(m) => {
                    m.value = m.value.wrapping_add_signed(by);
                    status::OK
                }
                None => status::NOT_FOUND,
            };
            note(
                &mut c,
                format!("  ← proxy_increment_metric({id}, {by}) = status {r}"),
            );
            Ok(r)
        },
    )?;
    l.func_wrap(E, "proxy_record_metric", |mut c: C<'_>, id: i32, v: i64| {
        let idx = (id as u32 as usize).wrapping_sub(1);
        let r = match c.data_mut().metrics.get_mut(idx) {
            Some(m) => {
                m.value = v as u64;
                status::OK
            }
            None => status::NOT_FOUND,
        };
        note(
            &mut c,
            format!("  ← proxy_record_metric({id}, {v}) = status {r}"),
        );
        Ok(r)
    })?;
    l.func_wrap(E, "proxy_get_metric", |mut c: C<'_>, id: i32, out: i32| {
        let idx = (id as u32 as usize).wrapping_sub(1);
        let v = c.data().metrics.get(idx).map(|m| m.value);
        note(&mut c, format!("  ← proxy_get_metric({id}) = {v:?}"));
        match v {
            Some(v) => store_u64(&mut c, out, v),
            None => Ok(status::NOT_FOUND),
        }
    })?;
    Ok(())
}

fn continue_stream(c: &mut C<'_>, t: i32, name: &str) -> i32 {
    let r = match (t, c.data_mut().stream_mut()) {
        (0 | 1, Some(s)) => {
            s.resumed = true;
            status::OK
        }
        (2 | 3, Some(_)) => status::UNIMPLEMENTED,
        _ => status::BAD_ARGUMENT,
    };
    note(c, format!("  ← {name}({t}) = status {r}"));
    r
}

fn define_wasi(l: &mut Linker<State>) -> Result<()> {
    const W: &str = "wasi_snapshot_preview1";

    l.func_wrap(W, "random_get", |mut c: C<'_>, ptr: i32, len: i32| {
        let n = len as u32 as usize;
        if n > 1 << 20 {
            return Ok(errno::INVAL);
        }
        let mut buf = vec![0u8; n];
        c.data_mut().rng.fill_bytes(&mut buf);
        note(&mut c, format!("  ← random_get({n})"));
        Ok(wasi_written(write(&mut c, ptr, &buf)?))
    })?;
    l.func_wrap(
        W,
        "clock_time_get",
        |mut c: C<'_>, id: i32, _precision: i64, out: i32| {
            let st = c.data();
            let t = match id {
                0 => st.now_ns,                                // realtime
                1..=3 => st.now_ns - st.monotonic_base_ns + 1, // monotonic, process, thread
                _ => return Ok(errno::NOTSUP),
            };
            note(&mut c, format!("  ← clock_time_get({id}) = {t}"));
            Ok(wasi_written(write_u64(&mut c, out, t)?))
        },
    )?;
    l.func_wrap(W, "clock_res_get", |mut c: C<'_>, _id: i32, out: i32| {
        Ok(wasi_written(write_u64(&mut c, out, 1)?))
    })?;
    l.func_wrap(
        W,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, written_out: i32| {
            if fd != 1 && fd != 2 {
                return Ok(errno::BADF);
            }
            let mut data = Vec::new();
            for i in 0..n {
                let Some(iov) = read(&mut c, iovs + i * 8, 8)? else {
                    return Ok(errno::FAULT);
                };
                let p = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Some(chunk) = read(&mut c, p, len)? else {
                    return Ok(errno::FAULT);
                };
                data.extend_from_slice(&chunk);
            }
            let st = c.data_mut();
            let (buf, level) = if fd == 1 {
                (&mut st.stdout, LogLevel::Info)
            } else {
                (&mut st.stderr, LogLevel::Error)
            };
            buf.extend_from_slice(&data);
            // Whole lines become log lines, as Envoy logs WASI output.
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let message = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                st.logs.push(LogLine { level, message });
            }
            note(&mut c, format!("  ← fd_write({fd}, {})", show(&data)));
            Ok(wasi_written(write_u32(
                &mut c,
                written_out,
                data.len() as u32,
            )?))
        },
    )?;
    l.func_wrap(
        W,
        "fd_read",
        |_c: C<'_>, _fd: i32, _iovs: i32, _n: i32, _out: i32| Ok(errno::BADF),
    )?;
    l.func_wrap(W, "fd_close", |_c: C<'_>, _fd: i32| Ok(errno::SUCCESS))?;
    l.func_wrap(
        W,
        "fd_seek",
        |_c: C<'_>, _fd: i32, _off: i64, _whence: i32, _out: i32| Ok(errno::SPIPE),
    )?;
    l.func_wrap(W, "fd_fdstat_get", |mut c: C<'_>, fd: i32, out: i32| {
        if !(0..=2).contains(&fd) {
            return Ok(errno::BADF);
        }
        // filetype character_device, no flags, all rights.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        stat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        Ok(wasi_written(write(&mut c, out, &stat)?))
    })?;
    l.func_wrap(W, "fd_prestat_get", |_c: C<'_>, _fd: i32, _out: i32| {
        Ok(errno::BADF)
    })?;
    l.func_wrap(
        W,
        "fd_prestat_dir_name",
        |_c: C<'_>, _fd: i32, _p: i32, _l: i32| Ok(errno::BADF),
    )?;
    l.func_wrap(
        W,
        "path_open",
        |_c: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| {
            Ok(errno::NOSYS)
        },
    )?;
    l.func_wrap(
        W,
        "poll_oneoff",
        |_c: C<'_>, _: i32, _: i32, _: i32, _: i32| Ok(errno::NOSYS),
    )?;
    l.func_wrap(W, "sched_yield", |_c: C<'_>| Ok(errno::SUCCESS))?;
    l.func_wrap(
        W,
        "environ_sizes_get",
        |mut c: C<'_>, count_out: i32, size_out: i32| {
            let env = c.data().env.clone();
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            note(
                &mut c,
                format!("  ← environ_sizes_get() = {} vars, {size} bytes", env.len()),
            );
            let ok = write_u32(&mut c, count_out, env.len() as u32)?
                && write_u32(&mut c, size_out, size as u32)?;
            Ok(wasi_written(ok))
        },
    )?;
    l.func_wrap(W, "environ_get", |mut c: C<'_>, ptrs: i32, buf: i32| {
        let env = c.data().env.clone();
        let mut off = 0i32;
        for (i, (k, v)) in env.iter().enumerate() {
            let entry = format!("{k}={v}\0");
            if !write_u32(&mut c, ptrs + 4 * i as i32, (buf + off) as u32)?
                || !write(&mut c, buf + off, entry.as_bytes())?
            {
                return Ok(errno::FAULT);
            }
            off += entry.len() as i32;
        }
        note(&mut c, "  ← environ_get()".into());
        Ok(errno::SUCCESS)
    })?;
    l.func_wrap(
        W,
        "args_sizes_get",
        |mut c: C<'_>, count_out: i32, size_out: i32| {
            let ok = write_u32(&mut c, count_out, 0)? && write_u32(&mut c, size_out, 0)?;
            Ok(wasi_written(ok))
        },
    )?;
    l.func_wrap(W, "args_get", |_c: C<'_>, _: i32, _: i32| {
        Ok(errno::SUCCESS)
    })?;
    l.func_wrap(W, "proc_exit", |mut c: C<'_>, code: i32| -> Result<()> {
        note(&mut c, format!("  ← proc_exit({code})"));
        wasmtime::bail!("the module called proc_exit({code})")
    })?;
    Ok(())
}
