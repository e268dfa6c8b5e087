/* Everything the cffi module exposes (the cdef/ headers mirror these). */
#ifndef NT_API_H
#define NT_API_H
#include "nt_common.h"
#include "nt_ed25519.h"
#include "nt_frames.h"
#include "nt_gcm.h"
#include "nt_kem.h"
#include "nt_lane.h"
#include "nt_record.h"
#include "nt_schedule.h"
#include "nt_sealsend.h"
#endif
