/* QR codes for the relay's pages (chatmail-salt), without external code.
 *
 * chatmailQR.matrix(text) gives the modules (rows of booleans, true = dark)
 * of a QR code (ISO/IEC 18004) holding the UTF-8 bytes of text: byte mode,
 * error correction level M, the smallest version that fits, the mask with
 * the lowest penalty.  chatmailQR.svg(text) draws it as an <svg> element
 * with a quiet zone of four modules.  The page uses it for the dclogin:
 * link that "Create account" (POST /new) hands out, which exists only in
 * the browser.
 */
"use strict";
var chatmailQR = (function () {
  // Level M, index = version: error correction codewords per block and
  // number of blocks (ISO/IEC 18004 table 9).
  var ECC_PER_BLOCK = [0, 10, 16, 26, 18, 24, 16, 18, 22, 22, 26, 30, 22, 22, 24, 24,
    28, 28, 26, 26, 26, 26, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 28];
  var BLOCKS = [0, 1, 1, 1, 2, 2, 4, 4, 4, 5, 5, 5, 8, 9, 9, 10, 10, 11, 13, 14, 16,
    17, 17, 18, 20, 21, 23, 25, 26, 28, 29, 31, 33, 35, 37, 38, 40, 43, 45, 47, 49];
  var LEVEL_M_BITS = 0;

  // GF(256) with the polynomial x^8 + x^4 + x^3 + x^2 + 1
  var EXP = new Array(512), LOG = new Array(256);
  (function () {
    var x = 1;
    for (var i = 0; i < 255; i++) {
      EXP[i] = x;
      LOG[x] = i;
      x <<= 1;
      if (x & 256) x ^= 0x11d;
    }
    for (i = 255; i < 512; i++) EXP[i] = EXP[i - 255];
  })();

  function gfMul(a, b) {
    return a && b ? EXP[LOG[a] + LOG[b]] : 0;
  }

  // generator polynomial (x - a^0)(x - a^1)...(x - a^(n-1)), highest
  // coefficient (1) left out
  function generator(n) {
    var poly = [1];
    for (var i = 0; i < n; i++) {
      var next = new Array(poly.length + 1).fill(0);
      for (var j = 0; j < poly.length; j++) {
        next[j] ^= poly[j];
        next[j + 1] ^= gfMul(poly[j], EXP[i]);
      }
      poly = next;
    }
    return poly.slice(1);
  }

  function eccOf(data, gen) {
    var rem = new Array(gen.length).fill(0);
    for (var i = 0; i < data.length; i++) {
      var factor = data[i] ^ rem.shift();
      rem.push(0);
      for (var j = 0; j < gen.length; j++) rem[j] ^= gfMul(gen[j], factor);
    }
    return rem;
  }

  function rawModules(version) {
    // modules left for data and error correction after the function patterns
    var n = (16 * version + 128) * version + 64;
    if (version >= 2) {
      var align = Math.floor(version / 7) + 2;
      n -= (25 * align - 10) * align - 55;
      if (version >= 7) n -= 36;
    }
    return n;
  }

  function dataCodewords(version) {
    return Math.floor(rawModules(version) / 8) - ECC_PER_BLOCK[version] * BLOCKS[version];
  }

  function alignmentPositions(version, size) {
    if (version === 1) return [];
    var count = Math.floor(version / 7) + 2;
    var step = version === 32 ? 26 : Math.ceil((version * 4 + 4) / (count * 2 - 2)) * 2;
    var result = [6];
    for (var pos = size - 7; result.length < count; pos -= step) result.splice(1, 0, pos);
    return result;
  }

  function utf8(text) {
    return Array.from(new TextEncoder().encode(text));
  }

  // the data codewords of version: mode, length, bytes, terminator, padding
  function codewords(bytes, version) {
    var bits = [];
    function put(value, length) {
      for (var i = length - 1; i >= 0; i--) bits.push((value >>> i) & 1);
    }
    put(4, 4);
    put(bytes.length, version < 10 ? 8 : 16);
    bytes.forEach(function (b) { put(b, 8); });
    var capacity = dataCodewords(version) * 8;
    put(0, Math.min(4, capacity - bits.length));
    put(0, (8 - (bits.length % 8)) % 8);
    for (var pad = 0xec; bits.length < capacity; pad ^= 0xec ^ 0x11) put(pad, 8);
    var result = [];
    for (var i = 0; i < bits.length; i += 8) {
      var b = 0;
      for (var j = 0; j < 8; j++) b = (b << 1) | bits[i + j];
      result.push(b);
    }
    return result;
  }

  // split into blocks, add each block's error correction, interleave
  function interleaved(data, version) {
    var blocks = BLOCKS[version], eccLen = ECC_PER_BLOCK[version];
    var total = Math.floor(rawModules(version) / 8);
    var shortBlocks = blocks - (total % blocks);
    var shortLen = Math.floor(total / blocks) - eccLen;
    var gen = generator(eccLen);
    var dataBlocks = [], eccBlocks = [], k = 0;
    for (var i = 0; i < blocks; i++) {
      var len = shortLen + (i < shortBlocks ? 0 : 1);
      var block = data.slice(k, k + len);
      k += len;
      dataBlocks.push(block);
      eccBlocks.push(eccOf(block, gen));
    }
    var result = [];
    for (i = 0; i <= shortLen; i++) {
      dataBlocks.forEach(function (b) { if (i < b.length) result.push(b[i]); });
    }
    for (i = 0; i < eccLen; i++) {
      eccBlocks.forEach(function (b) { result.push(b[i]); });
    }
    return result;
  }

  function bchBits(data, poly, degree) {
    var rem = data;
    for (var i = 0; i < degree; i++) rem = (rem << 1) ^ ((rem >>> (degree - 1)) * poly);
    return (data << degree) | rem;
  }

  var MASKS = [
    function (x, y) { return (x + y) % 2 === 0; },
    function (x, y) { return y % 2 === 0; },
    function (x) { return x % 3 === 0; },
    function (x, y) { return (x + y) % 3 === 0; },
    function (x, y) { return (Math.floor(x / 3) + Math.floor(y / 2)) % 2 === 0; },
    function (x, y) { return ((x * y) % 2) + ((x * y) % 3) === 0; },
    function (x, y) { return (((x * y) % 2) + ((x * y) % 3)) % 2 === 0; },
    function (x, y) { return (((x + y) % 2) + ((x * y) % 3)) % 2 === 0; },
  ];

  function build(version, stream, mask) {
    var size = version * 4 + 17;
    var dark = [], fixed = [];
    for (var y = 0; y < size; y++) {
      dark.push(new Array(size).fill(false));
      fixed.push(new Array(size).fill(false));
    }
    function set(x, y, value) {
      if (x < 0 || y < 0 || x >= size || y >= size) return;
      dark[y][x] = value;
      fixed[y][x] = true;
    }
    for (var i = 0; i < size; i++) {
      set(6, i, i % 2 === 0);
      set(i, 6, i % 2 === 0);
    }
    [[3, 3], [size - 4, 3], [3, size - 4]].forEach(function (c) {
      for (var dy = -4; dy <= 4; dy++) {
        for (var dx = -4; dx <= 4; dx++) {
          var d = Math.max(Math.abs(dx), Math.abs(dy));
          set(c[0] + dx, c[1] + dy, d !== 2 && d !== 4);
        }
      }
    });
    var align = alignmentPositions(version, size), last = align.length - 1;
    align.forEach(function (ax, i) {
      align.forEach(function (ay, j) {
        if ((i === 0 && j === 0) || (i === 0 && j === last) || (i === last && j === 0)) return;
        for (var dy = -2; dy <= 2; dy++) {
          for (var dx = -2; dx <= 2; dx++) {
            set(ax + dx, ay + dy, Math.max(Math.abs(dx), Math.abs(dy)) !== 1);
          }
        }
      });
    });
    // format information (level M, mask), two copies, and the dark module
    var format = bchBits((LEVEL_M_BITS << 3) | mask, 0x537, 10) ^ 0x5412;
    function fbit(i) { return ((format >>> i) & 1) === 1; }
    for (i = 0; i <= 5; i++) set(8, i, fbit(i));
    set(8, 7, fbit(6));
    set(8, 8, fbit(7));
    set(7, 8, fbit(8));
    for (i = 9; i < 15; i++) set(14 - i, 8, fbit(i));
    for (i = 0; i < 8; i++) set(size - 1 - i, 8, fbit(i));
    for (i = 8; i < 15; i++) set(8, size - 15 + i, fbit(i));
    set(8, size - 8, true);
    if (version >= 7) {
      var vinfo = bchBits(version, 0x1f25, 12);
      for (i = 0; i < 18; i++) {
        var bit = ((vinfo >>> i) & 1) === 1;
        set(size - 11 + (i % 3), Math.floor(i / 3), bit);
        set(Math.floor(i / 3), size - 11 + (i % 3), bit);
      }
    }
    // data in two-module columns, zigzag from the bottom right, masked
    var n = 0, total = stream.length * 8;
    for (var right = size - 1; right >= 1; right -= 2) {
      if (right === 6) right = 5;
      var upward = ((right + 1) & 2) === 0;
      for (var v = 0; v < size; v++) {
        y = upward ? size - 1 - v : v;
        for (var j = 0; j < 2; j++) {
          var x = right - j;
          if (fixed[y][x]) continue;
          var on = n < total && ((stream[n >>> 3] >>> (7 - (n & 7))) & 1) === 1;
          n++;
          dark[y][x] = on !== MASKS[mask](x, y);
        }
      }
    }
    return dark;
  }

  // the standard's penalty rules 1 (runs), 2 (2x2 blocks), 3 (finder-like
  // patterns) and 4 (dark/light balance)
  function penalty(m) {
    var size = m.length, score = 0, y, x;
    function lines(get) {
      var s = 0;
      for (var a = 0; a < size; a++) {
        var run = 1, line = [];
        for (var b = 0; b < size; b++) line.push(get(a, b));
        for (b = 1; b <= size; b++) {
          if (b < size && line[b] === line[b - 1]) {
            run++;
          } else {
            if (run >= 5) s += run - 2;
            run = 1;
          }
        }
        var str = line.map(function (d) { return d ? "1" : "0"; }).join("");
        var pattern = /(?=(10111010000|00001011101))/g;
        while (pattern.exec(str) !== null) {
          s += 40;
          pattern.lastIndex++;
        }
      }
      return s;
    }
    score += lines(function (a, b) { return m[a][b]; });
    score += lines(function (a, b) { return m[b][a]; });
    var darkCount = 0;
    for (y = 0; y < size; y++) {
      for (x = 0; x < size; x++) {
        if (m[y][x]) darkCount++;
        if (y + 1 < size && x + 1 < size && m[y][x] === m[y][x + 1] &&
            m[y][x] === m[y + 1][x] && m[y][x] === m[y + 1][x + 1]) score += 3;
      }
    }
    var percent = (darkCount * 100) / (size * size);
    score += Math.floor(Math.abs(percent - 50) / 5) * 10;
    return score;
  }

  function matrix(text) {
    var bytes = utf8(text);
    for (var version = 1; version <= 40; version++) {
      var header = 4 + (version < 10 ? 8 : 16);
      if (header + bytes.length * 8 <= dataCodewords(version) * 8) break;
    }
    if (version > 40) throw new Error("too long for a QR code");
    var stream = interleaved(codewords(bytes, version), version);
    var best = null, bestScore = Infinity;
    for (var mask = 0; mask < 8; mask++) {
      var m = build(version, stream, mask), score = penalty(m);
      if (score < bestScore) {
        best = m;
        bestScore = score;
      }
    }
    return best;
  }

  function svg(text) {
    var m = matrix(text), size = m.length + 8, path = "";
    for (var y = 0; y < m.length; y++) {
      for (var x = 0; x < m.length; x++) {
        if (m[y][x]) path += "M" + (x + 4) + " " + (y + 4) + "h1v1h-1z";
      }
    }
    var ns = "http://www.w3.org/2000/svg";
    var el = document.createElementNS(ns, "svg");
    el.setAttribute("viewBox", "0 0 " + size + " " + size);
    el.setAttribute("class", "qr");
    el.setAttribute("role", "img");
    el.setAttribute("aria-label", text);
    el.setAttribute("shape-rendering", "crispEdges");
    var bg = document.createElementNS(ns, "rect");
    bg.setAttribute("width", size);
    bg.setAttribute("height", size);
    bg.setAttribute("fill", "#fff");
    var fg = document.createElementNS(ns, "path");
    fg.setAttribute("d", path);
    fg.setAttribute("fill", "#000");
    el.append(bg, fg);
    return el;
  }

  return { matrix: matrix, svg: svg };
})();
if (typeof module !== "undefined") module.exports = chatmailQR;
