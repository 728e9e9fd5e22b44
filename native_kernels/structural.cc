// Native CPU kernels (XLA FFI custom calls) for jaxplastic's structural primitives.
//
// remove_synapses, remove_slots and add_synapses as plain loops: O(changed) writes into buffers that XLA
// aliases to the outputs (in place when the projection is donated or a loop carry), instead
// of the data-parallel passes over whole arrays that the XLA versions need. Their references
// are the XLA implementations in jaxplastic/_structural.py; results are identical bit for bit.
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

// Frees the live slots among flat(0) ... flat(n - 1) of batch entry b, in order (flat(i):
// a flat slot index, or -1 for none; a free slot, also one freed earlier, is skipped), and
// calls freed(i, slot) for each. Returns how many. The slots lie at random: their lines are
// prefetched kAhead entries ahead, and each one's column entry half as far ahead, once the
// slot's target and position have arrived; waiting for each would dominate.
template <typename I, typename Flat, typename Freed>
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
      free_bits[t * p.col_words + c / 32] |= uint32_t{1} << (c % 32);
      position[f] = static_cast<I>(p.col_cap);
    }
    post[f] = n_post;
    for (size_t v = 0; v < p.vars.size(); ++v) {
      ZeroElement(p.vars[v] + (b * slots + f) * p.widths[v], p.widths[v]);
    }
  }
  return count;
}

// Frees the live masked slots of batch entry b; returns how many. The mask is read first,
// in order, into a list of the masked slots, which FreeSlots then visits with its lines
// prefetched.
template <typename I>
int32_t RemoveOne(const Projection& p, int64_t b, const bool* mask, bool* removed) {
  const int64_t slots = p.n_pre * p.cap;
  mask += b * slots;
  removed += b * slots;
  std::memset(removed, 0, slots);
  std::vector<int64_t> listed;
  int64_t s = 0;
  // Eight mask bytes at a time: most words are all False.
  for (; s + 8 <= slots; s += 8) {
    uint64_t word;
    std::memcpy(&word, mask + s, 8);
    if (word == 0) continue;
    for (int64_t e = s; e < s + 8; ++e) {
      if (mask[e]) listed.push_back(e);
    }
  }
  for (; s < slots; ++s) {
    if (mask[s]) listed.push_back(s);
  }
  return FreeSlots<I>(
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

// Greedy in proposal order: a proposal is refused if out of range, if its target is already
// in the row or repeats an earlier in-range proposal of the row, if its row has no free slot,
// or (with a column view) if its column has no free entry; otherwise it takes the row's
// lowest free slot and the column's lowest free entry.
template <typename I>
void AddOne(const Projection& p, int64_t b, int64_t k, const I* rows, const I* targets,
            const std::vector<const char*>& values, bool* changed, int8_t* status,
            int32_t* counts) {
  const int64_t slots = p.n_pre * p.cap;
  I* post = reinterpret_cast<I*>(p.post) + b * slots;
  I* position = p.column ? reinterpret_cast<I*>(p.position) + b * slots : nullptr;
  I* pre_slot = p.column ? reinterpret_cast<I*>(p.pre_slot) + b * p.n_post * p.col_cap : nullptr;
  uint32_t* free_bits = p.column ? p.free_bits + b * p.n_post * p.col_words : nullptr;
  rows += b * k;
  targets += b * k;
  changed += b * slots;
  status += b * k;
  counts += b * 5;
  const I n_post = static_cast<I>(p.n_post);
  for (int c = 0; c < 5; ++c) counts[c] = 0;
  // A first pass over the proposals lists the real ones (in range, not the "none" sentinel):
  // a rule's fixed-width proposals are mostly "none", and the scratch below is then sized
  // and touched by the real ones only. It prefetches each proposal's row, and the column
  // entry that the proposal would take now (its column's lowest free entry, from the packed
  // free bits, which stay in cache): the greedy pass then finds them in the cache.
  std::memset(status, kNone, k);
  std::vector<int64_t> real;
  for (int64_t i = 0; i < k; ++i) {
    const I t = targets[i], r = rows[i];
    if (t == n_post) continue;
    if (r < 0 || r >= static_cast<I>(p.n_pre) || t < 0 || t >= n_post) {
      status[i] = kOutOfRange;
      ++counts[4];
      continue;
    }
    real.push_back(i);
    __builtin_prefetch(post + static_cast<int64_t>(r) * p.cap);
    if (p.column) {
      const int64_t c = LowestSetBit(free_bits + static_cast<int64_t>(t) * p.col_words, p.col_words);
      if (c >= 0) __builtin_prefetch(pre_slot + static_cast<int64_t>(t) * p.col_cap + c, 1);
    }
  }
  const int64_t n_real = static_cast<int64_t>(real.size());
  // Earlier real proposals of each row, as chains: head[row] -> previous[j] -> ... (indices
  // into `real`; `previous` is written before it is read: left uninitialised).
  std::vector<int64_t> head(p.n_pre, -1);
  std::unique_ptr<int64_t[]> previous(new int64_t[n_real]);
  // Rows that refused a proposal for lack of room: only there can a repeated proposal be
  // missing from the row (elsewhere the row scan finds it).
  std::vector<bool> short_of_room(p.n_pre, false);
  for (int64_t j = 0; j < n_real; ++j) {
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
    I* row = post + static_cast<int64_t>(r) * p.cap;
    int hits = 0;  // a branch-free comparison over the whole row vectorizes
    for (int64_t s = 0; s < p.cap; ++s) hits += row[s] == t;
    duplicate = duplicate || hits != 0;
    const int64_t free = duplicate ? -1 : FindFirst(row, p.cap, n_post);
    if (duplicate) {
      status[i] = kDuplicate;
      ++counts[1];
      continue;
    }
    if (free < 0) {
      status[i] = kRowFull;
      ++counts[2];
      short_of_room[r] = true;
      continue;
    }
    int64_t entry = -1;
    if (p.column) {
      uint32_t* bits = free_bits + static_cast<int64_t>(t) * p.col_words;
      entry = LowestSetBit(bits, p.col_words);
      if (entry < 0) {
        status[i] = kColumnFull;
        ++counts[3];
        short_of_room[r] = true;
        continue;
      }
      bits[entry / 32] &= ~(uint32_t{1} << (entry % 32));
      pre_slot[static_cast<int64_t>(t) * p.col_cap + entry] =
          static_cast<I>(static_cast<int64_t>(r) * p.cap + free);
    }
    const int64_t slot = static_cast<int64_t>(r) * p.cap + free;
    row[free] = t;
    if (p.column) position[slot] = static_cast<I>(entry);
    changed[slot] = true;
    for (size_t v = 0; v < p.vars.size(); ++v) {
      CopyElement(p.vars[v] + (b * slots + slot) * p.widths[v],
                  values[v] + (b * k + i) * p.widths[v], p.widths[v]);
    }
    status[i] = kAccepted;
    ++counts[0];
  }
}

// The column view of batch entry b from scratch, by counting: each live slot, in slot order,
// takes its column's next entry, so every column lists its synapses in slot order (as the
// XLA rebuild's stable sort does). counts[t] is column t's length, which may exceed col_cap:
// the overflowing slots are then left out of pre_slot and keep their would-be position (the
// caller reports the overflow). A target outside [0, n_post) is treated as a free slot.
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
  for (int64_t s = 0; s < slots; ++s) {
    const I t = post[s];
    if (t < 0 || t >= static_cast<I>(n_post)) {
      position[s] = static_cast<I>(col_cap);
      continue;
    }
    const int32_t pos = counts[t]++;
    position[s] = static_cast<I>(pos);
    if (pos < col_cap) pre_slot[static_cast<int64_t>(t) * col_cap + pos] = static_cast<I>(s);
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
  ParallelFor(pool, p.batch, [&](int64_t b) {
    count[b] = wide ? RemoveOne<int64_t>(p, b, m, out) : RemoveOne<int32_t>(p, b, m, out);
  });
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
  ParallelFor(pool, p.batch, [&](int64_t b) {
    if (wide) {
      AddOne<int64_t>(p, b, k, static_cast<const int64_t*>(rows->untyped_data()),
                      static_cast<const int64_t*>(targets->untyped_data()), values, ch, st, cn);
    } else {
      AddOne<int32_t>(p, b, k, static_cast<const int32_t*>(rows->untyped_data()),
                      static_cast<const int32_t*>(targets->untyped_data()), values, ch, st, cn);
    }
  });
  return ffi::Error::Success();
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
