/* bcryptprimitives.dll for wine 8, which lacks it.
 *
 * Rust's std (since 1.78) gets its random bytes from ProcessPrng in bcryptprimitives.dll;
 * without this DLL a Windows build exits 53 under wine before main. ProcessPrng hands
 * out bytes of the system's random generator and never fails; so does this one, by
 * forwarding to advapi32's RtlGenRandom (exported as SystemFunction036), which wine has.
 * Test-only: scripts/wine.sh builds it with zig and puts it in the test prefix's
 * system32. No release bundle carries it: real Windows 10 and later have the real one.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
  while (length > 0) {
    ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
    if (!SystemFunction036(data, chunk)) {
      return FALSE;
    }
    data += chunk;
    length -= chunk;
  }
  return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved) {
  (void)instance;
  (void)reason;
  (void)reserved;
  return TRUE;
}
