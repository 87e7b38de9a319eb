// multipart/related bodies (PS3.18 8.6.1.2): the parts of a WADO-RS response, as views
// into the response's bytes (no copy). The boundary is found with Boyer-Moore-Horspool,
// so a frame of pixel data is skipped in steps of the boundary's length.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The boundary parameter of a Content-Type header, or null. */
export function boundaryOf(contentType) {
  const m = /boundary=(?:"([^"]+)"|([^;,\s]+))/i.exec(contentType || '');
  return m ? m[1] || m[2] : null;
}

function search(haystack, needle, from) {
  const n = needle.length;
  const last = n - 1;
  const skip = new Map();
  for (let i = 0; i < last; i++) skip.set(needle[i], last - i);
  let i = from;
  while (i + last < haystack.length) {
    let j = last;
    while (j >= 0 && haystack[i + j] === needle[j]) j--;
    if (j < 0) return i;
    i += skip.get(haystack[i + last]) ?? n;
  }
  return -1;
}

/**
 * The parts of a multipart body: [{headers: {name: value}, body: Uint8Array}].
 * Throws when the body is not multipart with *boundary* or is cut short.
 */
export function parts(buffer, boundary) {
  const bytes = new Uint8Array(buffer);
  const delimiter = encoder.encode(`\r\n--${boundary}`);
  const first = encoder.encode(`--${boundary}`);
  let pos = search(bytes, first, 0);
  if (pos < 0) throw new Error('not a multipart body with the announced boundary');
  pos += first.length;
  const out = [];
  for (;;) {
    if (bytes[pos] === 0x2d && bytes[pos + 1] === 0x2d) return out; // the closing "--"
    const lineEnd = search(bytes, encoder.encode('\r\n'), pos);
    if (lineEnd < 0) break;
    const headEnd = search(bytes, encoder.encode('\r\n\r\n'), lineEnd);
    if (headEnd < 0) break;
    const headers = {};
    for (const line of decoder.decode(bytes.subarray(lineEnd + 2, headEnd)).split('\r\n')) {
      const colon = line.indexOf(':');
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const start = headEnd + 4;
    const end = search(bytes, delimiter, start);
    if (end < 0) break;
    out.push({ headers, body: bytes.subarray(start, end) });
    pos = end + delimiter.length;
  }
  throw new Error('the multipart body is incomplete');
}
