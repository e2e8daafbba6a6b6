// A word-level diff of a model's output against the reference: each Han character is a word
// (Chinese has no spaces), runs of letters/digits are words, whitespace and punctuation stand
// alone. Longest common subsequence, so reordered words show as removed and added.

const TOKEN = /\p{Script=Han}|[\p{L}\p{N}_]+|\s+|[^\s\p{L}\p{N}_]/gu;
const MAX_TOKENS = 2000; // 2000 x 2000 cells: a few ms; longer texts are compared on their start

export function tokenize(text) {
  return text.match(TOKEN) || [];
}

/**
 * ``[{op, text}]`` turning ``reference`` into ``output``: "same" segments are in both, "add"
 * only in the output, "del" only in the reference. Adjacent tokens of one op are merged.
 */
export function wordDiff(reference, output) {
  const a = tokenize(reference);
  const b = tokenize(output);
  const tailA = a.splice(MAX_TOKENS);
  const tailB = b.splice(MAX_TOKENS);
  const n = a.length;
  const m = b.length;
  // lengths[i][j]: the LCS of a[i:] and b[j:], flattened
  const lengths = new Uint32Array((n + 1) * (m + 1));
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      lengths[i * (m + 1) + j] = a[i] === b[j]
        ? lengths[(i + 1) * (m + 1) + j + 1] + 1
        : Math.max(lengths[(i + 1) * (m + 1) + j], lengths[i * (m + 1) + j + 1]);
    }
  }
  const ops = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      ops.push(["same", a[i]]);
      i += 1;
      j += 1;
    } else if (j < m && (i === n || lengths[i * (m + 1) + j + 1] >= lengths[(i + 1) * (m + 1) + j])) {
      ops.push(["add", b[j]]);
      j += 1;
    } else {
      ops.push(["del", a[i]]);
      i += 1;
    }
  }
  for (const token of tailA) ops.push(["del", token]);
  for (const token of tailB) ops.push(["add", token]);
  const segments = [];
  for (const [op, text] of ops) {
    const last = segments[segments.length - 1];
    if (last && last.op === op) last.text += text;
    else segments.push({ op, text });
  }
  return segments;
}
