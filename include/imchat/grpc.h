/*
 * imchat - gRPC status codes shared by imc_grpc_server (grpc_server.h)
 * and imc_grpc_client (grpc_client.h), and their mapping to IMC_ERR_*.
 *
 * The roles of a cluster (im-gateway, im-service) call each other with
 * gRPC over HTTP/2, wire-compatible with stock gRPC implementations:
 * unary calls, messages with the 5-byte length prefix and no
 * compression, deadlines in grpc-timeout, grpc-status and grpc-message
 * in the trailers. See doc/grpc.md.
 *
 * A failure that started as an IMC_ERR_* also travels as the trailer
 * "imc-error" (its decimal value), so that codes sharing one gRPC status
 * (TOO_LARGE and RATE_LIMITED are both RESOURCE_EXHAUSTED) come back
 * exact to an imchat peer; stock clients see the gRPC status.
 */
#ifndef IMCHAT_GRPC_H
#define IMCHAT_GRPC_H

#include <imchat/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The 17 status codes of gRPC, with their wire values. */
typedef enum imc_grpc_status {
  IMC_GRPC_OK = 0,
  IMC_GRPC_CANCELLED = 1,
  IMC_GRPC_UNKNOWN = 2,
  IMC_GRPC_INVALID_ARGUMENT = 3,
  IMC_GRPC_DEADLINE_EXCEEDED = 4,
  IMC_GRPC_NOT_FOUND = 5,
  IMC_GRPC_ALREADY_EXISTS = 6,
  IMC_GRPC_PERMISSION_DENIED = 7,
  IMC_GRPC_RESOURCE_EXHAUSTED = 8,
  IMC_GRPC_FAILED_PRECONDITION = 9,
  IMC_GRPC_ABORTED = 10,
  IMC_GRPC_OUT_OF_RANGE = 11,
  IMC_GRPC_UNIMPLEMENTED = 12,
  IMC_GRPC_INTERNAL = 13,
  IMC_GRPC_UNAVAILABLE = 14,
  IMC_GRPC_DATA_LOSS = 15,
  IMC_GRPC_UNAUTHENTICATED = 16
} imc_grpc_status;

/* The name of status as gRPC spells it ("DEADLINE_EXCEEDED"); "UNKNOWN"
 * for a value outside 0..16. Never NULL. */
IMC_EXTERN const char *imc_grpc_status_name(int status);

/*
 * The gRPC status for an IMC_ERR_* (0 gives IMC_GRPC_OK):
 *   INVALID_ARGUMENT -> INVALID_ARGUMENT   NOT_FOUND -> NOT_FOUND
 *   EXISTS -> ALREADY_EXISTS               FORBIDDEN -> PERMISSION_DENIED
 *   AUTH, EXPIRED -> UNAUTHENTICATED       BLOCKED -> FAILED_PRECONDITION
 *   TOO_LARGE, RATE_LIMITED, QUEUE_FULL, NOMEM -> RESOURCE_EXHAUSTED
 *   UNAVAILABLE, WOULDBLOCK, IO -> UNAVAILABLE
 *   CLOSED -> CANCELLED                    REVOKED -> ABORTED
 *   PROTO, INCOMPLETE, INTERNAL, CALLBACK_FAILURE and any other -> INTERNAL
 */
IMC_EXTERN int imc_grpc_status_from_error(int error);

/*
 * The IMC_ERR_* for a gRPC status (IMC_GRPC_OK gives 0): the inverse of
 * imc_grpc_status_from_error where it is one to one, and
 *   DEADLINE_EXCEEDED, UNAVAILABLE, ABORTED -> IMC_ERR_UNAVAILABLE
 *   RESOURCE_EXHAUSTED -> IMC_ERR_RATE_LIMITED
 *   CANCELLED -> IMC_ERR_CLOSED
 *   OUT_OF_RANGE -> IMC_ERR_INVALID_ARGUMENT
 *   UNKNOWN, UNIMPLEMENTED, INTERNAL, DATA_LOSS, others -> IMC_ERR_INTERNAL
 */
IMC_EXTERN int imc_grpc_status_to_error(int status);

#ifdef __cplusplus
}
#endif

#endif /* IMCHAT_GRPC_H */
