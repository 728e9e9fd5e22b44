// Native CPU kernels (XLA FFI custom calls) for jaxplastic's structural primitives.
//
// remove_synapses, remove_slots and add_synapses as plain loops: O(changed) writes into buffers that XLA
// aliases to the outputs (in place when the projection is donated or a loop carry), instead
// of the data-parallel passes over whole arrays that the XLA versions need. Their references
// are the XLA implementations in jaxplastic/_structural.py; results are identical bit for bit.
//
// Threads: the batch entries are shared out over XLA's CPU thread pool. Where there are fewer
// entries than threads and an entry's work is large, removal by mask, addition and the column
// build also split each entry into parts (ranges of its slots, rows or columns) that run at
// once; the results are those of the sequential passes, bit for bit.
//
// Layouts (batched over any leading dimensions, one independent projection per batch entry):
//   post [..., n_pre, cap]           target per slot, n_post = free
//   position [..., n_pre, cap]       column position per slot, col_cap = free
//   pre_slot [..., n_post, col_cap]  flat slot per column entry, n_pre * cap = free
//   free_bits [..., n_post, col_words] uint32: bit c % 32 of word c / 32 set iff entry c is
//                                    free (col_words = ceil(col_cap / 32))
//   per-synapse variables [..., n_pre, cap] of any dtype; zero in a free slot.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Proposal outcomes, as in native_kernels/structural.py (ACCEPTED ... NONE).
enum Status : int8_t {
  kAccepted = 0,
  kDuplicate = 1,
  kRowFull = 2,
  kColumnFull = 3,
  kOutOfRange = 4,
  kNone = 5,
};

size_t Width(const ffi::AnyBuffer& b) { return ffi::ByteWidth(b.element_type()); }

char* Bytes(const ffi::AnyBuffer& b) { return static_cast<char*>(b.untyped_data()); }

ffi::Error Shape2(const ffi::AnyBuffer& b, int64_t* rows, int64_t* cols) {
  auto dims = b.dimensions();
  if (dims.size() < 2) return ffi::Error::InvalidArgument("expected an array of rank >= 2");
  *rows = dims[dims.size() - 2];
  *cols = dims[dims.size() - 1];
  return ffi::Error::Success();
}

// The number of batch entries: the product of the dimensions before the last two (also when
// a projection has no slots, so that its results are still written).
int64_t Batch(const ffi::AnyBuffer& b) {
  auto dims = b.dimensions();
  int64_t n = 1;
  for (size_t d = 0; d + 2 < dims.size(); ++d) n *= dims[d];
  return n;
}

// Views of the (aliased) output buffers: XLA has already copied each input into its output
// when it could not reuse the input's buffer.
struct Projection {
  int64_t n_pre = 0, cap = 0, n_post = 0, col_cap = 0, col_words = 0, batch = 0;
  bool column = false;
  char* post = nullptr;
  char* position = nullptr;
  char* pre_slot = nullptr;
  uint32_t* free_bits = nullptr;
  std::vector<char*> vars;
  std::vector<size_t> widths;
};

// Zeroes (or copies) one element of `width` bytes; the usual widths without a library call.
inline void ZeroElement(char* x, size_t width) {
  switch (width) {
    case 4: {
      const uint32_t zero = 0;
      std::memcpy(x, &zero, 4);
      return;
    }
    case 2: {
      const uint16_t zero = 0;
      std::memcpy(x, &zero, 2);
      return;
    }
    default:
      std::memset(x, 0, width);
  }
}

inline void CopyElement(char* to, const char* from, size_t width) {
  switch (width) {
    case 4:
      std::memcpy(to, from, 4);
      return;
    case 2:
      std::memcpy(to, from, 2);
      return;
    default:
      std::memcpy(to, from, width);
  }
}

// work(0) ... work(n - 1) on XLA's CPU thread pool and the calling thread. The caller takes
// items too, and waits only for items that a pool thread has started, so it never waits on a
// task the pool has not run; a task that starts after the last item finds nothing to do.
template <typename Work>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const Work& work) {
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) work(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto state = std::make_shared<State>();
  auto drain = [state, n, &work] {
    for (int64_t i = state->next.fetch_add(1); i < n; i = state->next.fetch_add(1)) {
      work(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->finished.notify_all();
      }
    }
  };
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([drain] { drain(); });
  drain();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] { return state->done.load() == n; });
}

// How many parts each batch entry's work is split into, over the pool's threads: one where
// there are as many entries as threads, or where the work is too small to pay for the
// hand-over. Parts of an entry take disjoint ranges of its rows (or columns).
int64_t PartsPerEntry(ffi::ThreadPool& pool, int64_t batch, bool large) {
  const int64_t threads = pool.num_threads();
  if (!large || batch >= threads) return 1;
  return std::min<int64_t>(threads / batch, 16);
}

// Work large enough to share out: a mask or projection of kLargeScan slots, a list of
// kLargeList slots or proposals.
constexpr int64_t kLargeScan = int64_t{1} << 16;
constexpr int64_t kLargeList = 2048;

// Part h of `parts` of [0, n).
std::pair<int64_t, int64_t> PartOf(int64_t h, int64_t parts, int64_t n) {
  return {n * h / parts, n * (h + 1) / parts};
}

// Frees the live slots among flat(0) ... flat(n - 1) of batch entry b, in order (flat(i):
// a flat slot index, or -1 for none; a free slot, also one freed earlier, is skipped), and
// calls freed(i, slot) for each. Returns how many. The slots lie at random: their lines are
// prefetched kAhead entries ahead, and each one's column entry half as far ahead, once the
// slot's target and position have arrived; waiting for each would dominate.
template <typename I, bool kShared = false, typename Flat, typename Freed>
int32_t FreeSlots(const Projection& p, int64_t b, int64_t n, const Flat& flat, const Freed& freed) {
  const int64_t slots = p.n_pre * p.cap;
  I* post = reinterpret_cast<I*>(p.post) + b * slots;
  I* position = p.column ? reinterpret_cast<I*>(p.position) + b * slots : nullptr;
  I* pre_slot = p.column ? reinterpret_cast<I*>(p.pre_slot) + b * p.n_post * p.col_cap : nullptr;
  uint32_t* free_bits = p.column ? p.free_bits + b * p.n_post * p.col_words : nullptr;
  const I n_post = static_cast<I>(p.n_post);
  const I sentinel = static_cast<I>(slots);
  constexpr int64_t kAhead = 16;
  int32_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) {
      const int64_t f = flat(i + kAhead);
      if (f >= 0) {
        __builtin_prefetch(post + f, 1);
        if (p.column) __builtin_prefetch(position + f, 1);
        for (size_t v = 0; v < p.vars.size(); ++v) {
          __builtin_prefetch(p.vars[v] + (b * slots + f) * p.widths[v], 1);
        }
      }
    }
    if (p.column && i + kAhead / 2 < n) {
      const int64_t f = flat(i + kAhead / 2);
      if (f >= 0 && post[f] >= 0 && post[f] < n_post && position[f] < p.col_cap) {
        __builtin_prefetch(pre_slot + static_cast<int64_t>(post[f]) * p.col_cap + position[f], 1);
      }
    }
    const int64_t f = flat(i);
    if (f < 0 || post[f] == n_post) continue;
    freed(i, f);
    ++count;
    if (p.column) {
      const int64_t t = post[f], c = position[f];
      pre_slot[t * p.col_cap + c] = sentinel;
      if (kShared) {
        __atomic_fetch_or(free_bits + t * p.col_words + c / 32, uint32_t{1} << (c % 32),
                          __ATOMIC_RELAXED);
      } else {
        free_bits[t * p.col_words + c / 32] |= uint32_t{1} << (c % 32);
      }
      position[f] = static_cast<I>(p.col_cap);
    }
    post[f] = n_post;
    for (size_t v = 0; v < p.vars.size(); ++v) {
      ZeroElement(p.vars[v] + (b * slots + f) * p.widths[v], p.widths[v]);
    }
  }
  return count;
}

// Frees the live masked slots among slots [lo, hi) of batch entry b; returns how many. The
// mask is read first, in order, into a list of the masked slots, which FreeSlots then visits
// with its lines prefetched. kShared: other parts of the entry free slots at the same time.
template <typename I, bool kShared = false>
int32_t RemoveOne(const Projection& p, int64_t b, int64_t lo, int64_t hi, const bool* mask,
                  bool* removed) {
  const int64_t slots = p.n_pre * p.cap;
  mask += b * slots;
  removed += b * slots;
  std::memset(removed + lo, 0, hi - lo);
  std::vector<int64_t> listed;
  int64_t s = lo;
  // Eight mask bytes at a time: most words are all False.
  for (; s + 8 <= hi; s += 8) {
    uint64_t word;
    std::memcpy(&word, mask + s, 8);
    if (word == 0) continue;
    for (int64_t e = s; e < s + 8; ++e) {
      if (mask[e]) listed.push_back(e);
    }
  }
  for (; s < hi; ++s) {
    if (mask[s]) listed.push_back(s);
  }
  return FreeSlots<I, kShared>(
      p, b, static_cast<int64_t>(listed.size()), [&](int64_t i) { return listed[i]; },
      [&](int64_t, int64_t f) { removed[f] = true; });
}

// Frees the listed live slots (rows[e], slots[e]) of batch entry b where valid[e]; a slot
// listed again is free by then and skipped, as is an entry out of range. removed[e] says
// whether entry e freed a live slot; changed marks the freed slots. Returns how many.
template <typename I>
int32_t RemoveSlotsOne(const Projection& p, int64_t b, int64_t k, const I* rows, const I* slot_of,
                       const bool* valid, bool* removed, bool* changed) {
  const int64_t slots = p.n_pre * p.cap;
  rows += b * k;
  slot_of += b * k;
  valid += b * k;
  removed += b * k;
  changed += b * slots;
  std::memset(changed, 0, slots);
  std::memset(removed, 0, k);
  auto flat = [&](int64_t e) -> int64_t {
    const I r = rows[e], s = slot_of[e];
    if (!valid[e] || r < 0 || r >= static_cast<I>(p.n_pre) || s < 0 || s >= static_cast<I>(p.cap)) {
      return -1;
    }
    return static_cast<int64_t>(r) * p.cap + s;
  };
  return FreeSlots<I>(p, b, k, flat, [&](int64_t e, int64_t f) {
    removed[e] = true;
    changed[f] = true;
  });
}

// Index of the first entry of x[0, n) equal to value, or -1.
template <typename I>
inline int64_t FindFirst(const I* x, int64_t n, I value) {
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] == value) return i;
  }
  return -1;
}

#ifdef __SSE2__
// Sixteen int32 compared per branch.
template <>
inline int64_t FindFirst<int32_t>(const int32_t* x, int64_t n, int32_t value) {
  const __m128i v = _mm_set1_epi32(value);
  int64_t start = 0;
  for (; start + 16 <= n; start += 16) {
    const __m128i* p = reinterpret_cast<const __m128i*>(x + start);
    const int bits =
        _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_loadu_si128(p), v))) |
        _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_loadu_si128(p + 1), v))) << 4 |
        _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_loadu_si128(p + 2), v))) << 8 |
        _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_loadu_si128(p + 3), v))) << 12;
    if (bits != 0) return start + __builtin_ctz(bits);
  }
  for (; start < n; ++start) {
    if (x[start] == value) return start;
  }
  return -1;
}
#endif

// Index of the lowest set bit of words[0, n), or -1.
inline int64_t LowestSetBit(const uint32_t* words, int64_t n) {
  for (int64_t w = 0; w < n; ++w) {
    if (words[w] != 0) return w * 32 + __builtin_ctz(words[w]);
  }
  return -1;
}

// One batch entry's additions: its arrays, and the scratch of the greedy pass.
template <typename I>
struct Additions {
  const Projection& p;
  int64_t b, k;
  I* post;
  I* position;
  I* pre_slot;
  uint32_t* free_bits;
  const I* rows;
  const I* targets;
  const std::vector<const char*>& values;
  bool* changed;
  int8_t* status;
  std::vector<int64_t> real;  // the real proposals (in range, not "none"), in order
  // Earlier real proposals of each row, as chains: head[row] -> previous[j] -> ... (indices
  // into `real`; `previous` is written before it is read: left uninitialised).
  std::vector<int64_t> head;
  std::unique_ptr<int64_t[]> previous;
  // Rows that refused a proposal for lack of room: only there can a repeated proposal be
  // missing from the row (elsewhere the row scan finds it). Bytes, not vector<bool>'s bits:
  // parts of the row pass write different rows at once.
  std::vector<uint8_t> short_of_room;
  std::unique_ptr<int64_t[]> slot;  // per real proposal, the slot it took (when accepted)
  // In parts only, per real proposal: whether its slot was marked changed before, and the
  // column entry it took (or -1), so that the parts' work can be undone.
  std::unique_ptr<uint8_t[]> was_changed;
  std::unique_ptr<int64_t[]> taken;
  int32_t out_of_range = 0;

  Additions(const Projection& p, int64_t b, int64_t k, const I* rows, const I* targets,
            const std::vector<const char*>& values, bool* changed, int8_t* status)
      : p(p),
        b(b),
        k(k),
        post(reinterpret_cast<I*>(p.post) + b * p.n_pre * p.cap),
        position(p.column ? reinterpret_cast<I*>(p.position) + b * p.n_pre * p.cap : nullptr),
        pre_slot(p.column ? reinterpret_cast<I*>(p.pre_slot) + b * p.n_post * p.col_cap : nullptr),
        free_bits(p.column ? p.free_bits + b * p.n_post * p.col_words : nullptr),
        rows(rows + b * k),
        targets(targets + b * k),
        values(values),
        changed(changed + b * p.n_pre * p.cap),
        status(status + b * k) {}

  // Lists the real proposals and refuses those out of range. A rule's fixed-width proposals
  // are mostly "none", and the scratch is then sized and touched by the real ones only.
  // `prefetch`: each proposal's row, and the column entry that it would take now (its
  // column's lowest free entry, from the packed free bits, which stay in cache), so that a
  // greedy pass that follows at once finds them in the cache.
  void List(bool prefetch) {
    const I n_post = static_cast<I>(p.n_post);
    std::memset(status, kNone, k);
    for (int64_t i = 0; i < k; ++i) {
      const I t = targets[i], r = rows[i];
      if (t == n_post) continue;
      if (r < 0 || r >= static_cast<I>(p.n_pre) || t < 0 || t >= n_post) {
        status[i] = kOutOfRange;
        ++out_of_range;
        continue;
      }
      real.push_back(i);
      if (!prefetch) continue;
      __builtin_prefetch(post + static_cast<int64_t>(r) * p.cap);
      if (p.column) {
        const int64_t c =
            LowestSetBit(free_bits + static_cast<int64_t>(t) * p.col_words, p.col_words);
        if (c >= 0) __builtin_prefetch(pre_slot + static_cast<int64_t>(t) * p.col_cap + c, 1);
      }
    }
    head.assign(p.n_pre, -1);
    previous.reset(new int64_t[real.size()]);
    short_of_room.assign(p.n_pre, 0);
    slot.reset(new int64_t[real.size()]);
    was_changed.reset(new uint8_t[real.size()]);
    taken.reset(new int64_t[real.size()]);
  }

  // The row's part of real proposal j: kDuplicate, kRowFull, or kAccepted with the row's
  // lowest free slot in slot[j]. Writes nothing but the row's chain.
  Status ChooseSlot(int64_t j) {
    const int64_t i = real[j];
    const I t = targets[i], r = rows[i];
    bool duplicate = false;
    if (short_of_room[r]) {
      for (int64_t q = head[r]; q >= 0 && !duplicate; q = previous[q]) {
        duplicate = targets[real[q]] == t;
      }
    }
    previous[j] = head[r];
    head[r] = j;
    const I* row = post + static_cast<int64_t>(r) * p.cap;
    int hits = 0;  // a branch-free comparison over the whole row vectorizes
    for (int64_t s = 0; s < p.cap; ++s) hits += row[s] == t;
    if (duplicate || hits != 0) return kDuplicate;
    const int64_t free = FindFirst(row, p.cap, static_cast<I>(p.n_post));
    if (free < 0) {
      short_of_room[r] = 1;
      return kRowFull;
    }
    slot[j] = static_cast<int64_t>(r) * p.cap + free;
    return kAccepted;
  }

  // Writes accepted proposal j's target and initial values into its slot.
  void FillSlot(int64_t j) {
    const int64_t i = real[j], s = slot[j];
    post[s] = targets[i];
    changed[s] = true;
    const int64_t slots = p.n_pre * p.cap;
    for (size_t v = 0; v < p.vars.size(); ++v) {
      CopyElement(p.vars[v] + (b * slots + s) * p.widths[v], values[v] + (b * k + i) * p.widths[v],
                  p.widths[v]);
    }
  }

  // Gives accepted proposal j its column's lowest free entry; false if the column is full.
  bool TakeEntry(int64_t j) {
    const int64_t t = targets[real[j]];
    uint32_t* bits = free_bits + t * p.col_words;
    const int64_t entry = LowestSetBit(bits, p.col_words);
    if (entry < 0) return false;
    bits[entry / 32] &= ~(uint32_t{1} << (entry % 32));
    pre_slot[t * p.col_cap + entry] = static_cast<I>(slot[j]);
    position[slot[j]] = static_cast<I>(entry);
    taken[j] = entry;
    return true;
  }

  // Greedy in proposal order: a proposal is refused if out of range, if its target is
  // already in the row or repeats an earlier in-range proposal of the row, if its row has no
  // free slot, or (with a column view) if its column has no free entry; otherwise it takes
  // the row's lowest free slot and the column's lowest free entry.
  void Greedy(int32_t* counts) {
    List(/*prefetch=*/true);
    for (int c = 0; c < 5; ++c) counts[c] = 0;
    counts[4] = out_of_range;
    for (int64_t j = 0; j < static_cast<int64_t>(real.size()); ++j) {
      Status s = ChooseSlot(j);
      if (s == kAccepted && p.column && !TakeEntry(j)) {
        s = kColumnFull;
        short_of_room[rows[real[j]]] = 1;
      }
      if (s == kAccepted) FillSlot(j);
      status[real[j]] = s;
      ++counts[s];
    }
  }

  // --- The same, split into parts over the pool's threads (after List(false)). Unless a
  // column fills, rows and columns do not interact: each part takes the proposals of its
  // range of rows, in order, and then each part gives the accepted proposals of its range of
  // columns their entries, in order; the result is Greedy's. Where a column did fill
  // (ColumnPart returns false), Undo restores the entry as it was, for Greedy.

  // The row pass of rows [lo, hi): counts[1 ... 2] by cause, counts[0] accepted.
  void RowPart(int64_t lo, int64_t hi, int32_t* counts) {
    std::vector<int64_t> mine;
    for (int64_t j = 0; j < static_cast<int64_t>(real.size()); ++j) {
      const int64_t r = rows[real[j]];
      if (r >= lo && r < hi) mine.push_back(j);
    }
    constexpr int64_t kAhead = 16;
    const int64_t row_bytes = p.cap * static_cast<int64_t>(sizeof(I));
    const int64_t n = static_cast<int64_t>(mine.size());
    for (int64_t m = 0; m < n; ++m) {
      if (m + kAhead < n) {
        const char* row = reinterpret_cast<const char*>(
            post + static_cast<int64_t>(rows[real[mine[m + kAhead]]]) * p.cap);
        for (int64_t byte = 0; byte < row_bytes; byte += 64) __builtin_prefetch(row + byte);
      }
      const int64_t j = mine[m];
      const Status s = ChooseSlot(j);
      taken[j] = -1;
      if (s == kAccepted) {
        was_changed[j] = changed[slot[j]];
        FillSlot(j);
      }
      status[real[j]] = s;
      ++counts[s];
    }
  }

  // The column pass of columns [lo, hi), after every row pass; false if a column filled.
  bool ColumnPart(int64_t lo, int64_t hi) {
    std::vector<int64_t> mine;
    for (int64_t j = 0; j < static_cast<int64_t>(real.size()); ++j) {
      const int64_t i = real[j], t = targets[i];
      if (t >= lo && t < hi && status[i] == kAccepted) mine.push_back(j);
    }
    // The entries' lines lie at random: each one's free-bit word and slot position are
    // prefetched kAhead proposals ahead, and its column entry half as far ahead, once the
    // word has arrived.
    constexpr int64_t kAhead = 16;
    const int64_t n = static_cast<int64_t>(mine.size());
    for (int64_t m = 0; m < n; ++m) {
      if (m + kAhead < n) {
        const int64_t j = mine[m + kAhead];
        __builtin_prefetch(free_bits + targets[real[j]] * p.col_words, 1);
        __builtin_prefetch(position + slot[j], 1);
      }
      if (m + kAhead / 2 < n) {
        const int64_t t = targets[real[mine[m + kAhead / 2]]];
        const int64_t c = LowestSetBit(free_bits + t * p.col_words, p.col_words);
        if (c >= 0) __builtin_prefetch(pre_slot + t * p.col_cap + c, 1);
      }
      if (!TakeEntry(mine[m])) return false;
    }
    return true;
  }

  // Undoes RowPart and ColumnPart: the accepted proposals' slots and column entries are
  // free again (target, position, pre_slot and free bit as for any free entry, variables
  // zero), and `changed` is as it was.
  void Undo() {
    const int64_t slots = p.n_pre * p.cap;
    for (int64_t j = 0; j < static_cast<int64_t>(real.size()); ++j) {
      if (status[real[j]] != kAccepted) continue;
      const int64_t s = slot[j];
      if (p.column) {
        if (taken[j] >= 0) {
          const int64_t t = targets[real[j]], c = taken[j];
          free_bits[t * p.col_words + c / 32] |= uint32_t{1} << (c % 32);
          pre_slot[t * p.col_cap + c] = static_cast<I>(slots);
        }
        position[s] = static_cast<I>(p.col_cap);
      }
      post[s] = static_cast<I>(p.n_post);
      changed[s] = was_changed[j];
      for (size_t v = 0; v < p.vars.size(); ++v) {
        ZeroElement(p.vars[v] + (b * slots + s) * p.widths[v], p.widths[v]);
      }
    }
  }
};

// The additions of every batch entry: Additions::Greedy per entry, or, where the pool has
// more threads than entries and the entries many proposals, in parts over rows and then
// columns (Greedy's result; an entry where a column filled is undone and runs Greedy).
template <typename I>
void AddAll(ffi::ThreadPool& pool, const Projection& p, int64_t k, const I* rows,
            const I* targets, const std::vector<const char*>& values, bool* changed,
            int8_t* status, int32_t* counts) {
  const int64_t parts = PartsPerEntry(pool, p.batch, k >= kLargeList);
  auto additions = [&](int64_t b) {
    return std::make_unique<Additions<I>>(p, b, k, rows, targets, values, changed, status);
  };
  if (parts == 1) {
    ParallelFor(pool, p.batch, [&](int64_t b) { additions(b)->Greedy(counts + b * 5); });
    return;
  }
  const int64_t n = p.batch * parts;
  std::vector<std::unique_ptr<Additions<I>>> adds(p.batch);
  ParallelFor(pool, p.batch, [&](int64_t b) {
    adds[b] = additions(b);
    adds[b]->List(/*prefetch=*/false);
  });
  std::vector<int32_t> part_counts(n * 5, 0);
  ParallelFor(pool, n, [&](int64_t e) {
    const auto [lo, hi] = PartOf(e % parts, parts, p.n_pre);
    adds[e / parts]->RowPart(lo, hi, part_counts.data() + e * 5);
  });
  std::vector<uint8_t> filled(n, 0);
  if (p.column) {
    ParallelFor(pool, n, [&](int64_t e) {
      const auto [lo, hi] = PartOf(e % parts, parts, p.n_post);
      filled[e] = !adds[e / parts]->ColumnPart(lo, hi);
    });
  }
  ParallelFor(pool, p.batch, [&](int64_t b) {
    if (std::any_of(filled.begin() + b * parts, filled.begin() + (b + 1) * parts,
                    [](uint8_t f) { return f != 0; })) {
      adds[b]->Undo();
      additions(b)->Greedy(counts + b * 5);
      return;
    }
    for (int c = 0; c < 4; ++c) {
      counts[b * 5 + c] = 0;
      for (int64_t h = 0; h < parts; ++h) counts[b * 5 + c] += part_counts[(b * parts + h) * 5 + c];
    }
    counts[b * 5 + 4] = adds[b]->out_of_range;
  });
}

// The column view of batch entry b from scratch, by counting: each live slot, in slot order,
// takes its column's next entry, so every column lists its synapses in slot order (as the
// XLA rebuild's stable sort does). counts[t] is column t's length, which may exceed col_cap:
// the overflowing slots are then left out of pre_slot and keep their would-be position (the
// caller reports the overflow). A target outside [0, n_post) is treated as a free slot.
template <typename I>
void PlaceSlots(const I* post, I* position, I* pre_slot, int64_t lo, int64_t hi, int64_t n_post,
                int64_t col_cap, int32_t* cursor);

template <typename I>
void ColumnsOne(int64_t n_pre, int64_t cap, int64_t n_post, int64_t col_cap, int64_t b,
                const ffi::AnyBuffer& post_buf, ffi::AnyBuffer& pre_slot_buf,
                ffi::AnyBuffer& position_buf, int32_t* counts) {
  const int64_t slots = n_pre * cap;
  const I* post = static_cast<const I*>(post_buf.untyped_data()) + b * slots;
  I* position = static_cast<I*>(position_buf.untyped_data()) + b * slots;
  I* pre_slot = static_cast<I*>(pre_slot_buf.untyped_data()) + b * n_post * col_cap;
  counts += b * n_post;
  std::fill(pre_slot, pre_slot + n_post * col_cap, static_cast<I>(slots));
  std::fill(counts, counts + n_post, 0);
  PlaceSlots(post, position, pre_slot, 0, slots, n_post, col_cap, counts);
}

// Slots [lo, hi) of one batch entry (post, position and pre_slot are its arrays), in order:
// each live slot takes entry cursor[t]++ of its column t, a free one (or a target outside
// [0, n_post)) position col_cap; entries past col_cap are left out of pre_slot.
template <typename I>
void PlaceSlots(const I* post, I* position, I* pre_slot, int64_t lo, int64_t hi, int64_t n_post,
                int64_t col_cap, int32_t* cursor) {
  for (int64_t s = lo; s < hi; ++s) {
    const I t = post[s];
    if (t < 0 || t >= static_cast<I>(n_post)) {
      position[s] = static_cast<I>(col_cap);
      continue;
    }
    const int32_t pos = cursor[t]++;
    position[s] = static_cast<I>(pos);
    if (pos < col_cap) pre_slot[static_cast<int64_t>(t) * col_cap + pos] = static_cast<I>(s);
  }
}

// Reads the projection from the results: post at `first`; from `rest` on, position,
// pre_slot and free_bits (with a column view), then the per-synapse variables.
ffi::Error ReadProjection(const ffi::RemainingRets& rets, size_t first, size_t rest,
                          size_t n_vars, int64_t n_post, bool column, Projection* p) {
  auto post = rets.get<ffi::AnyBuffer>(first);
  if (post.has_error()) return post.error();
  const ffi::AnyBuffer& post_buf = **post;
  if (auto e = Shape2(post_buf, &p->n_pre, &p->cap); e.failure()) return e;
  p->n_post = n_post;
  p->column = column;
  p->post = Bytes(post_buf);
  p->batch = Batch(post_buf);
  size_t next = rest;
  if (column) {
    auto position = rets.get<ffi::AnyBuffer>(next++);
    auto pre_slot = rets.get<ffi::AnyBuffer>(next++);
    auto free_bits = rets.get<ffi::AnyBuffer>(next++);
    if (position.has_error()) return position.error();
    if (pre_slot.has_error()) return pre_slot.error();
    if (free_bits.has_error()) return free_bits.error();
    int64_t col_rows = 0, bit_rows = 0;
    if (auto e = Shape2(**pre_slot, &col_rows, &p->col_cap); e.failure()) return e;
    if (auto e = Shape2(**free_bits, &bit_rows, &p->col_words); e.failure()) return e;
    if ((*free_bits)->element_type() != ffi::DataType::U32 || bit_rows != col_rows ||
        p->col_words != (p->col_cap + 31) / 32) {
      return ffi::Error::InvalidArgument("free_bits must be uint32[..., n_post, ceil(col_cap / 32)]");
    }
    p->position = Bytes(**position);
    p->pre_slot = Bytes(**pre_slot);
    p->free_bits = static_cast<uint32_t*>((*free_bits)->untyped_data());
  }
  for (size_t v = 0; v < n_vars; ++v) {
    auto var = rets.get<ffi::AnyBuffer>(next++);
    if (var.has_error()) return var.error();
    p->vars.push_back(Bytes(**var));
    p->widths.push_back(Width(**var));
  }
  return ffi::Error::Success();
}

// Args: mask, post, [position, pre_slot, free_bits], vars...   Rets: removed, count, post,
// [position, pre_slot, free_bits], vars... (each projection argument aliased to its result).
ffi::Error RemoveImpl(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                      int64_t n_post, bool column) {
  const size_t n_fixed = column ? 5 : 2;
  if (args.size() < n_fixed || rets.size() != args.size() + 1) {
    return ffi::Error::InvalidArgument("jaxplastic_remove: wrong number of operands");
  }
  auto mask = args.get<ffi::AnyBuffer>(0);
  auto removed = rets.get<ffi::AnyBuffer>(0);
  auto counts = rets.get<ffi::AnyBuffer>(1);
  auto post_in = args.get<ffi::AnyBuffer>(1);
  if (mask.has_error()) return mask.error();
  if (removed.has_error()) return removed.error();
  if (counts.has_error()) return counts.error();
  if (post_in.has_error()) return post_in.error();
  Projection p;
  if (auto e = ReadProjection(rets, 2, 3, args.size() - n_fixed, n_post, column, &p);
      e.failure()) {
    return e;
  }
  int32_t* count = static_cast<int32_t*>((*counts)->untyped_data());
  const bool* m = static_cast<const bool*>(mask->untyped_data());
  bool* out = static_cast<bool*>((*removed)->untyped_data());
  const bool wide = post_in->element_type() == ffi::DataType::S64;
  if (!wide && post_in->element_type() != ffi::DataType::S32) {
    return ffi::Error::InvalidArgument("jaxplastic_remove: post must be int32 or int64");
  }
  const int64_t slots = p.n_pre * p.cap;
  const int64_t parts = PartsPerEntry(pool, p.batch, slots >= kLargeScan);
  std::vector<int32_t> part_count(p.batch * parts, 0);
  ParallelFor(pool, p.batch * parts, [&](int64_t e) {
    const int64_t b = e / parts;
    const auto [lo, hi] = PartOf(e % parts, parts, slots);
    if (parts == 1) {
      part_count[e] = wide ? RemoveOne<int64_t>(p, b, lo, hi, m, out)
                           : RemoveOne<int32_t>(p, b, lo, hi, m, out);
    } else {
      part_count[e] = wide ? RemoveOne<int64_t, true>(p, b, lo, hi, m, out)
                           : RemoveOne<int32_t, true>(p, b, lo, hi, m, out);
    }
  });
  for (int64_t b = 0; b < p.batch; ++b) {
    count[b] = 0;
    for (int64_t h = 0; h < parts; ++h) count[b] += part_count[b * parts + h];
  }
  return ffi::Error::Success();
}

// Args: rows, slots, valid, post, [position, pre_slot, free_bits], vars...
// Rets: removed, count, changed, post, [position, pre_slot, free_bits], vars... (aliased).
ffi::Error RemoveSlotsImpl(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                           int64_t n_post, bool column) {
  const size_t n_fixed = column ? 7 : 4;
  if (args.size() < n_fixed || rets.size() != args.size()) {
    return ffi::Error::InvalidArgument("jaxplastic_remove_slots: wrong number of operands");
  }
  auto rows = args.get<ffi::AnyBuffer>(0);
  auto slot_of = args.get<ffi::AnyBuffer>(1);
  auto valid = args.get<ffi::AnyBuffer>(2);
  auto removed = rets.get<ffi::AnyBuffer>(0);
  auto counts = rets.get<ffi::AnyBuffer>(1);
  auto changed = rets.get<ffi::AnyBuffer>(2);
  if (rows.has_error()) return rows.error();
  if (slot_of.has_error()) return slot_of.error();
  if (valid.has_error()) return valid.error();
  if (removed.has_error()) return removed.error();
  if (counts.has_error()) return counts.error();
  if (changed.has_error()) return changed.error();
  Projection p;
  if (auto e = ReadProjection(rets, 3, 4, args.size() - n_fixed, n_post, column, &p);
      e.failure()) {
    return e;
  }
  auto dims = rows->dimensions();
  const int64_t k = dims.size() == 0 ? 1 : dims[dims.size() - 1];
  const bool wide = rows->element_type() == ffi::DataType::S64;
  if (!wide && rows->element_type() != ffi::DataType::S32) {
    return ffi::Error::InvalidArgument("jaxplastic_remove_slots: rows must be int32 or int64");
  }
  const bool* va = static_cast<const bool*>(valid->untyped_data());
  bool* rm = static_cast<bool*>((*removed)->untyped_data());
  bool* ch = static_cast<bool*>((*changed)->untyped_data());
  int32_t* count = static_cast<int32_t*>((*counts)->untyped_data());
  ParallelFor(pool, p.batch, [&](int64_t b) {
    if (wide) {
      count[b] = RemoveSlotsOne<int64_t>(p, b, k, static_cast<const int64_t*>(rows->untyped_data()),
                                         static_cast<const int64_t*>(slot_of->untyped_data()), va,
                                         rm, ch);
    } else {
      count[b] = RemoveSlotsOne<int32_t>(p, b, k, static_cast<const int32_t*>(rows->untyped_data()),
                                         static_cast<const int32_t*>(slot_of->untyped_data()), va,
                                         rm, ch);
    }
  });
  return ffi::Error::Success();
}

// Args: rows, targets, post, changed, [position, pre_slot, free_bits], vars..., values...
// Rets: status, counts, post, changed, [position, pre_slot, free_bits], vars... (aliased).
ffi::Error AddImpl(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                   int64_t n_post, bool column) {
  const size_t n_fixed = column ? 7 : 4;
  if (args.size() < n_fixed || (args.size() - n_fixed) % 2 != 0 ||
      rets.size() != n_fixed + (args.size() - n_fixed) / 2) {
    return ffi::Error::InvalidArgument("jaxplastic_add: wrong number of operands");
  }
  const size_t n_vars = (args.size() - n_fixed) / 2;
  auto rows = args.get<ffi::AnyBuffer>(0);
  auto targets = args.get<ffi::AnyBuffer>(1);
  auto status = rets.get<ffi::AnyBuffer>(0);
  auto counts = rets.get<ffi::AnyBuffer>(1);
  auto changed = rets.get<ffi::AnyBuffer>(3);
  if (rows.has_error()) return rows.error();
  if (targets.has_error()) return targets.error();
  if (status.has_error()) return status.error();
  if (counts.has_error()) return counts.error();
  if (changed.has_error()) return changed.error();
  // The projection's results: post (2), then [position, pre_slot, free_bits] and the
  // variables from 4 on; the `changed` result (3) sits between post and the column view.
  Projection p;
  if (auto e = ReadProjection(rets, 2, 4, n_vars, n_post, column, &p); e.failure()) return e;
  const size_t first_value = 4 + (column ? 3 : 0) + n_vars;
  std::vector<const char*> values;
  for (size_t v = 0; v < n_vars; ++v) {
    auto value = args.get<ffi::AnyBuffer>(first_value + v);
    if (value.has_error()) return value.error();
    values.push_back(Bytes(*value));
  }
  auto dims = rows->dimensions();
  const int64_t k = dims.size() == 0 ? 1 : dims[dims.size() - 1];
  const bool wide = rows->element_type() == ffi::DataType::S64;
  bool* ch = static_cast<bool*>((*changed)->untyped_data());
  int8_t* st = static_cast<int8_t*>((*status)->untyped_data());
  int32_t* cn = static_cast<int32_t*>((*counts)->untyped_data());
  if (wide) {
    AddAll<int64_t>(pool, p, k, static_cast<const int64_t*>(rows->untyped_data()),
                    static_cast<const int64_t*>(targets->untyped_data()), values, ch, st, cn);
  } else {
    AddAll<int32_t>(pool, p, k, static_cast<const int32_t*>(rows->untyped_data()),
                    static_cast<const int32_t*>(targets->untyped_data()), values, ch, st, cn);
  }
  return ffi::Error::Success();
}

// ColumnsOne of every batch entry in `parts` parts over ranges of its slots: each part
// counts its slots into their columns, then places them after those of the parts before,
// so that every column still lists its slots in slot order.
template <typename I>
void ColumnsInParts(ffi::ThreadPool& pool, int64_t parts, int64_t n_pre, int64_t cap,
                    int64_t n_post, int64_t col_cap, int64_t batch, const ffi::AnyBuffer& post_buf,
                    ffi::AnyBuffer& pre_slot_buf, ffi::AnyBuffer& position_buf, int32_t* counts) {
  const int64_t slots = n_pre * cap;
  const I* post = static_cast<const I*>(post_buf.untyped_data());
  I* position = static_cast<I*>(position_buf.untyped_data());
  I* pre_slot = static_cast<I*>(pre_slot_buf.untyped_data());
  // cursor[(b * parts + h) * n_post + t]: part h's slots in column t, then its next entry.
  std::vector<int32_t> cursor(batch * parts * n_post, 0);
  ParallelFor(pool, batch * parts, [&](int64_t e) {
    const int64_t b = e / parts;
    const auto [lo, hi] = PartOf(e % parts, parts, slots);
    int32_t* c = cursor.data() + e * n_post;
    for (int64_t s = b * slots + lo; s < b * slots + hi; ++s) {
      const I t = post[s];
      if (t >= 0 && t < static_cast<I>(n_post)) ++c[t];
    }
    const auto [first, last] = PartOf(e % parts, parts, n_post);
    std::fill(pre_slot + (b * n_post + first) * col_cap, pre_slot + (b * n_post + last) * col_cap,
              static_cast<I>(slots));
  });
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < n_post; ++t) {
      int32_t total = 0;
      for (int64_t h = 0; h < parts; ++h) {
        int32_t& c = cursor[(b * parts + h) * n_post + t];
        const int32_t n = c;
        c = total;
        total += n;
      }
      counts[b * n_post + t] = total;
    }
  }
  ParallelFor(pool, batch * parts, [&](int64_t e) {
    const int64_t b = e / parts;
    const auto [lo, hi] = PartOf(e % parts, parts, slots);
    PlaceSlots(post + b * slots, position + b * slots, pre_slot + b * n_post * col_cap, lo, hi,
               n_post, col_cap, cursor.data() + e * n_post);
  });
}

// Args: post.   Rets: pre_slot, position, counts (int32).
ffi::Error ColumnsImpl(ffi::ThreadPool pool, ffi::AnyBuffer post, ffi::Result<ffi::AnyBuffer> pre_slot,
                       ffi::Result<ffi::AnyBuffer> position,
                       ffi::Result<ffi::Buffer<ffi::DataType::S32>> counts, int64_t n_post,
                       int64_t column_capacity) {
  int64_t n_pre = 0, cap = 0;
  if (auto e = Shape2(post, &n_pre, &cap); e.failure()) return e;
  if (pre_slot->element_type() != post.element_type() ||
      position->element_type() != post.element_type()) {
    return ffi::Error::InvalidArgument("jaxplastic_columns: results must have post's dtype");
  }
  const bool wide = post.element_type() == ffi::DataType::S64;
  if (!wide && post.element_type() != ffi::DataType::S32) {
    return ffi::Error::InvalidArgument("jaxplastic_columns: post must be int32 or int64");
  }
  int32_t* cn = counts->typed_data();
  const int64_t parts = PartsPerEntry(pool, Batch(post), n_pre * cap >= kLargeScan);
  if (parts > 1) {
    (wide ? ColumnsInParts<int64_t> : ColumnsInParts<int32_t>)(
        pool, parts, n_pre, cap, n_post, column_capacity, Batch(post), post, *pre_slot,
        *position, cn);
    return ffi::Error::Success();
  }
  ParallelFor(pool, Batch(post), [&](int64_t b) {
    (wide ? ColumnsOne<int64_t> : ColumnsOne<int32_t>)(n_pre, cap, n_post, column_capacity, b,
                                                       post, *pre_slot, *position, cn);
  });
  return ffi::Error::Success();
}

}  // namespace

namespace {

// The editing kernels' signature: any operands and results (the projection's variables vary),
// the target sentinel and whether there is a column view.
auto EditBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .RemainingArgs()
      .RemainingRets()
      .Attr<int64_t>("n_post")
      .Attr<bool>("column");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxplasticRemove, RemoveImpl, EditBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxplasticRemoveSlots, RemoveSlotsImpl, EditBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxplasticAdd, AddImpl, EditBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxplasticColumns, ColumnsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::DataType::S32>>()
                                  .Attr<int64_t>("n_post")
                                  .Attr<int64_t>("column_capacity"));
