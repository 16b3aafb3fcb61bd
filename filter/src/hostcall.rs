//! The host calls the glue makes, straight on the proxy-wasm ABI (0.2.1).
//!
//! The SDK's wrappers panic on a status they do not expect and on a header value that is not
//! UTF-8, which any client can send; a panic traps, and a trap takes the whole VM down. These
//! return every failure as a status instead, and hand header maps over as the bytes the host
//! wrote (read them with `headermap`). Names and values go to the host as bytes. The SDK still dispatches contexts, owns the memory the
//! host allocates through `proxy_on_memory_allocate`, and sends callouts (it must register
//! their tokens to route the answers).

/// `proxy_get_header_map_pairs` and friends: which map.
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const CALLOUT_RESPONSE_HEADERS: u32 = 6;
/// `proxy_get_buffer_bytes`: which buffer.
pub const CALLOUT_RESPONSE_BODY: u32 = 4;
pub const PLUGIN_CONFIGURATION: u32 = 7;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
/// `proxy_set_shared_data`: the value changed since it was read.
pub const CAS_MISMATCH: u32 = 8;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

/// `proxy_define_metric` kinds.
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_HISTOGRAM: u32 = 2;

/// Defines a metric (the host returns the same id for a name defined before).
pub fn define_metric(kind: u32, name: &str) -> Result<u32, u32> {
    let mut id = 0u32;
    // SAFETY: the host reads `name` and writes one u32.
    match unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) } {
        OK => Ok(id),
        status => Err(status),
    }
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), u32> {
    // SAFETY: no memory is passed.
    status(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), u32> {
    // SAFETY: no memory is passed.
    status(unsafe { proxy_record_metric(id, value) })
}

/// Milliseconds since the Unix epoch, by the host's clock.
pub fn now_ms() -> Result<u64, u32> {
    let mut t = 0u64;
    // SAFETY: the host writes one u64.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        OK => Ok(t / 1_000_000),
        status => Err(status),
    }
}

/// Lets the current request, paused, go on upstream.
pub fn resume_request() -> Result<(), u32> {
    // SAFETY: no memory is passed; 0 is the request stream.
    status(unsafe { proxy_continue_stream(0) })
}

/// Makes later host calls act on `context_id` (a request's context, from the root).
pub fn set_effective_context(context_id: u32) -> Result<(), u32> {
    // SAFETY: no memory is passed.
    status(unsafe { proxy_set_effective_context(context_id) })
}

/// A value every VM of this `vm_id` in the proxy shares, with its compare-and-swap token;
/// `(empty, 0)` when it was never set.
pub fn shared_data(key: &str) -> Result<(Vec<u8>, u32), u32> {
    let mut data = std::ptr::null_mut();
    let mut size = 0usize;
    let mut cas = 0u32;
    // SAFETY: as in `header_map`; the host writes one u32 into `cas`.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) }
    {
        OK => Ok((take(data, size), cas)),
        NOT_FOUND => Ok((Vec::new(), 0)),
        status => Err(status),
    }
}

/// Sets a shared value if its token is still `cas` (0: whatever it is); `Err(CAS_MISMATCH)`
/// when another VM changed it in between.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), u32> {
    // SAFETY: the host reads the given lengths from live slices.
    status(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Takes ownership of bytes the host wrote into memory it got from `proxy_on_memory_allocate`.
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host got `data` from the SDK's `proxy_on_memory_allocate(size)`, a boxed
    // slice of exactly `size` bytes, filled it, and gave it to us; nothing else frees it.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// A header map, serialized.
pub fn header_map(map: u32) -> Result<Vec<u8>, u32> {
    let mut data = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: the host writes a pointer and a size into the two locals.
    match unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) } {
        OK => Ok(take(data, size)),
        status => Err(status),
    }
}

fn status(rc: u32) -> Result<(), u32> {
    match rc {
        OK => Ok(()),
        status => Err(status),
    }
}

/// Adds a header, keeping any of the same name.
pub fn add_header(map: u32, name: &[u8], value: &[u8]) -> Result<(), u32> {
    // SAFETY: the host reads the given lengths from live slices.
    status(unsafe {
        proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Replaces every header of this name with one.
pub fn replace_header(map: u32, name: &[u8], value: &[u8]) -> Result<(), u32> {
    // SAFETY: the host reads the given lengths from live slices.
    status(unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Removes every header of this name.
pub fn remove_header(map: u32, name: &[u8]) -> Result<(), u32> {
    // SAFETY: the host reads the given length from a live slice.
    status(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

/// Up to `max_size` bytes of a buffer from `start`; empty if the host has none.
pub fn buffer(buffer: u32, start: usize, max_size: usize) -> Result<Vec<u8>, u32> {
    let mut data = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: as in `header_map`.
    match unsafe { proxy_get_buffer_bytes(buffer, start, max_size, &mut data, &mut size) } {
        OK => Ok(take(data, size)),
        NOT_FOUND => Ok(Vec::new()),
        status => Err(status),
    }
}

/// Answers the current request locally; `headers` serialized.
pub fn send_local_response(code: u32, headers: &[u8], body: &[u8]) -> Result<(), u32> {
    // SAFETY: the host reads the given lengths from live slices.
    status(unsafe {
        proxy_send_local_response(
            code,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Seconds since the Unix epoch, by the host's clock.
pub fn now_secs() -> Result<u64, u32> {
    let mut t = 0u64;
    // SAFETY: the host writes one u64.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        OK => Ok(t / 1_000_000_000),
        status => Err(status),
    }
}
