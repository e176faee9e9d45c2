// ExtentLock: a range lock over lock units (runs of blocks), with shared
// (read) and exclusive (write) holders.
//
// Grants are first-come first-served among conflicting requests: a request
// waits for every earlier request whose range overlaps its own, unless both
// are shared.  So overlapping requests are applied in the order they reached
// the lock, and a stream of readers cannot starve a writer.  Requests on
// disjoint ranges never wait for each other.  The internal mutex is held only
// for bookkeeping, never across I/O.
//
// Thread-safety: fully thread-safe.  A Guard must be released by the thread
// that holds it or moved elsewhere; it releases on destruction.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <list>
#include <mutex>

namespace insitu {

class ExtentLock {
 private:
  struct Request {
    uint64_t first;
    uint64_t end;  // exclusive
    bool exclusive;
  };

 public:
  class Guard {
   public:
    Guard() = default;
    Guard(Guard&& other) noexcept : lock_(other.lock_), it_(other.it_) { other.lock_ = nullptr; }
    Guard& operator=(Guard&& other) noexcept;
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() { Release(); }
    void Release();

   private:
    friend class ExtentLock;
    Guard(ExtentLock* lock, std::list<Request>::iterator it) : lock_(lock), it_(it) {}
    ExtentLock* lock_ = nullptr;
    std::list<Request>::iterator it_;
  };

  // Blocks until [first, end) can be held in the requested mode.
  Guard Lock(uint64_t first, uint64_t end, bool exclusive);

 private:
  static bool Conflicts(const Request& a, const Request& b) {
    return a.first < b.end && b.first < a.end && (a.exclusive || b.exclusive);
  }
  bool Blocked(std::list<Request>::iterator it) const;

  std::mutex mu_;
  std::condition_variable cv_;
  std::list<Request> queue_;  // in arrival order: held and waiting requests
};

}  // namespace insitu
