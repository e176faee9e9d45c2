// Fuzzes the transmission-phase parsers the server runs on every request:
// ParseRequestHeader(), CheckRequest() against a negotiated state, and the
// block-status answer built from an allocation map
// (AllocationToDescriptors(), EncodeBlockStatusChunk()).
//
// Input: [state][export size u64 BE][max payload u32 BE][request count]
//        [requests, 28 bytes each, the last one possibly short]
//        [allocation runs: (length u32 BE, bits u8)...]
//   state bit 0: read-only export; bit 1: FUA advertised; bit 2: structured
//   replies negotiated; bit 3: base:allocation selected.
//   run bits: 0 hole, 1 zero.
//
// An accepted request must be one the device can execute without leaving
// the export, the payload limit or the negotiated features; a refusal must
// carry one of the errors the protocol allows; and a block-status answer
// must fit the request, merge equal neighbours and never come back empty
// for a range the map covers.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

#include "libcore/block_device.h"
#include "libcore/nbd/protocol.h"

namespace {

namespace nbd = insitu::nbd;

constexpr uint32_t kMaxQuery = 1u << 30;  // what the server asks the device for at most
constexpr size_t kMaxDescriptors = 1 << 16;

void Require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "nbd_request_fuzz: %s\n", what);
  std::abort();
}

uint64_t Big(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v = (v << 8) | p[i];
  return v;
}

void CheckAccepted(const nbd::Request& r, const nbd::TransmissionState& s) {
  const bool read_only = (s.flags & nbd::kFlagReadOnly) != 0;
  uint16_t allowed = (s.flags & nbd::kFlagSendFua) ? nbd::kCmdFlagFua : 0;
  if (r.type == nbd::kCmdWriteZeroes) allowed |= nbd::kCmdFlagNoHole;
  if (r.type == nbd::kCmdBlockStatus) allowed |= nbd::kCmdFlagReqOne;
  if (r.type != nbd::kCmdDisc) {
    Require((r.flags & ~allowed) == 0, "accepted a flag not offered or not valid for the command");
  }
  const bool in_range = r.offset <= s.export_size && r.length <= s.export_size - r.offset;
  switch (r.type) {
    case nbd::kCmdDisc:
    case nbd::kCmdFlush:
      return;
    case nbd::kCmdRead:
    case nbd::kCmdCache:
      Require(r.length <= s.max_payload, "accepted a read beyond the payload limit");
      Require(in_range, "accepted a read past the end");
      return;
    case nbd::kCmdWrite:
      Require(r.length <= s.max_payload, "accepted a write beyond the payload limit");
      [[fallthrough]];
    case nbd::kCmdTrim:
    case nbd::kCmdWriteZeroes:
      Require(!read_only, "accepted a write to a read-only export");
      Require(in_range, "accepted a write past the end");
      return;
    case nbd::kCmdBlockStatus:
      Require(s.structured && s.meta_allocation, "accepted block status without negotiation");
      Require(r.length > 0 && in_range, "accepted an empty or out-of-range block status");
      return;
    default:
      Require(false, "accepted an unknown command");
  }
}

void CheckBlockStatus(const nbd::Request& r, std::span<const insitu::AllocationRun> runs) {
  const uint32_t len = r.length < kMaxQuery ? r.length : kMaxQuery;
  const size_t limit = (r.flags & nbd::kCmdFlagReqOne) ? 1 : kMaxDescriptors;
  const std::vector<nbd::BlockDescriptor> ds = nbd::AllocationToDescriptors(runs, len, limit);
  uint64_t mapped = 0;
  for (const insitu::AllocationRun& run : runs) mapped += run.length;
  Require(ds.size() <= limit, "more descriptors than allowed");
  Require(!ds.empty() || mapped < len, "no descriptor for a covered range");
  uint64_t described = 0;
  for (size_t i = 0; i < ds.size(); ++i) {
    Require(ds[i].length > 0, "zero-length descriptor");
    Require(i == 0 || ds[i].status != ds[i - 1].status, "equal neighbours not merged");
    described += ds[i].length;
  }
  Require(described <= len, "descriptors exceed the request");
  if (mapped >= len && ds.size() < limit) {
    Require(described == len, "descriptors stop short although the map goes on");
  }
  const std::vector<uint8_t> chunk =
      nbd::EncodeBlockStatusChunk(nbd::kReplyFlagDone, r.cookie, 1, ds);
  Require(chunk.size() == nbd::kChunkHeaderSize + 4 + 8 * ds.size(), "chunk size");
  Require(Big(chunk.data() + nbd::kChunkHeaderSize - 4, 4) == 4 + 8 * ds.size(),
          "chunk length field");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr size_t kPrefix = 1 + 8 + 4 + 1;
  if (size < kPrefix) return 0;
  const uint8_t bits = data[0];
  nbd::TransmissionState state;
  state.export_size = Big(data + 1, 8);
  state.max_payload = static_cast<uint32_t>(Big(data + 9, 4));
  state.structured = (bits & 4) != 0;
  state.meta_allocation = (bits & 8) != 0;
  state.flags = nbd::kFlagHasFlags | nbd::kFlagSendFlush;
  state.flags |= (bits & 1) ? nbd::kFlagReadOnly : nbd::kFlagSendTrim | nbd::kFlagSendWriteZeroes;
  if (bits & 2) state.flags |= nbd::kFlagSendFua;
  const size_t count = data[13];
  data += kPrefix;
  size -= kPrefix;

  const size_t request_bytes = std::min(size, count * nbd::kRequestHeaderSize);
  std::vector<insitu::AllocationRun> runs;
  for (size_t at = request_bytes; at + 5 <= size; at += 5) {
    const uint8_t run_bits = data[at + 4];
    runs.push_back({Big(data + at, 4), (run_bits & 1) != 0, (run_bits & 2) != 0});
  }

  for (size_t at = 0; at < request_bytes; at += nbd::kRequestHeaderSize) {
    const size_t n = std::min(nbd::kRequestHeaderSize, request_bytes - at);
    nbd::Request r;
    const bool parsed = nbd::ParseRequestHeader({data + at, n}, &r).ok();
    if (n < nbd::kRequestHeaderSize) {
      Require(!parsed, "parsed a truncated request header");
      break;
    }
    if (!parsed) continue;
    const uint32_t error = nbd::CheckRequest(r, state);
    if (error != 0) {
      Require(error == nbd::kEinval || error == nbd::kEnospc || error == nbd::kEperm,
              "refused with an error the protocol does not list");
      continue;
    }
    CheckAccepted(r, state);
    if (r.type == nbd::kCmdBlockStatus) CheckBlockStatus(r, runs);
  }
  return 0;
}
