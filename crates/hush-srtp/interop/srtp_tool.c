/*
 * srtp_tool: drives libsrtp2 for hush-srtp's interop tests and benchmark.
 * SPDX-License-Identifier: AGPL-3.0-only
 *
 * Build: cc -O2 -o srtp_tool srtp_tool.c -lsrtp2
 *
 * Transform mode (one libsrtp session for the whole run, so ROC, replay window and SRTCP index
 * carry over from packet to packet):
 *   srtp_tool <protect-rtp|unprotect-rtp|protect-rtcp|unprotect-rtcp> <128|256> <key hex> <salt hex>
 *   reads one packet per line in hex on stdin, writes "OK <hex>" or "ERR <libsrtp status>".
 *
 * Bench mode:
 *   srtp_tool bench <128|256> <payload bytes> <packets>
 *   protects <packets> RTP packets (12-byte header, consecutive sequence numbers), then
 *   unprotects a batch of them repeatedly (new inbound session per batch, as the replay window
 *   requires), copying each packet into a work buffer first; prints packets per second:
 *   "protect_pps <n>" and "unprotect_pps <n>".
 */
#include <srtp2/srtp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_PACKET 70000

static int unhex(const char *s, uint8_t *out, size_t max)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        n--;
    if (n % 2 != 0 || n / 2 > max)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    return (int)(n / 2);
}

static void die(const char *what, int status)
{
    fprintf(stderr, "srtp_tool: %s failed (%d)\n", what, status);
    exit(2);
}

static srtp_t make_session(int bits, const uint8_t *key_and_salt, int outbound)
{
    srtp_policy_t policy;
    memset(&policy, 0, sizeof policy);
    if (bits == 256) {
        srtp_crypto_policy_set_aes_gcm_256_16_auth(&policy.rtp);
        srtp_crypto_policy_set_aes_gcm_256_16_auth(&policy.rtcp);
    } else {
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&policy.rtp);
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&policy.rtcp);
    }
    policy.ssrc.type = outbound ? ssrc_any_outbound : ssrc_any_inbound;
    policy.key = (unsigned char *)key_and_salt;
    policy.window_size = 128;
    policy.allow_repeat_tx = 0;
    policy.next = NULL;
    srtp_t session;
    srtp_err_status_t st = srtp_create(&session, &policy);
    if (st != srtp_err_status_ok)
        die("srtp_create", st);
    return session;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int bench(int bits, int payload, long packets)
{
    uint8_t key[44];
    for (int i = 0; i < 44; i++)
        key[i] = (uint8_t)(i * 7 + 1);
    srtp_t tx = make_session(bits, key, 1);

    int plain_len = 12 + payload;
    uint8_t *plain = calloc(1, plain_len);
    plain[0] = 0x80;
    plain[1] = 96;
    plain[8] = 0x11; plain[9] = 0x22; plain[10] = 0x33; plain[11] = 0x44;
    for (int i = 12; i < plain_len; i++)
        plain[i] = (uint8_t)i;
    uint8_t work[MAX_PACKET];

    /* Protect: copy the template, set the sequence number, protect. */
    double t0 = now_s();
    for (long n = 0; n < packets; n++) {
        memcpy(work, plain, plain_len);
        work[2] = (uint8_t)(n >> 8);
        work[3] = (uint8_t)n;
        int len = plain_len;
        srtp_err_status_t st = srtp_protect(tx, work, &len);
        if (st != srtp_err_status_ok)
            die("srtp_protect", st);
    }
    double protect_s = now_s() - t0;

    /* Unprotect: a batch of protected packets, replayed into a fresh inbound session. */
    enum { BATCH = 4096 };
    srtp_t tx2 = make_session(bits, key, 1);
    int prot_len = 0;
    uint8_t *batch = malloc((size_t)BATCH * (plain_len + SRTP_MAX_TRAILER_LEN));
    int stride = plain_len + SRTP_MAX_TRAILER_LEN;
    for (int n = 0; n < BATCH; n++) {
        uint8_t *p = batch + (size_t)n * stride;
        memcpy(p, plain, plain_len);
        p[2] = (uint8_t)(n >> 8);
        p[3] = (uint8_t)n;
        int len = plain_len;
        srtp_err_status_t st = srtp_protect(tx2, p, &len);
        if (st != srtp_err_status_ok)
            die("srtp_protect", st);
        prot_len = len;
    }
    srtp_t rx = NULL;
    t0 = now_s();
    for (long n = 0; n < packets; n++) {
        int i = (int)(n % BATCH);
        if (i == 0) {
            if (rx)
                srtp_dealloc(rx);
            rx = make_session(bits, key, 0);
        }
        memcpy(work, batch + (size_t)i * stride, prot_len);
        int len = prot_len;
        srtp_err_status_t st = srtp_unprotect(rx, work, &len);
        if (st != srtp_err_status_ok)
            die("srtp_unprotect", st);
    }
    double unprotect_s = now_s() - t0;
    printf("protect_pps %.0f\nunprotect_pps %.0f\n", packets / protect_s,
           packets / unprotect_s);
    srtp_dealloc(rx);
    srtp_dealloc(tx);
    srtp_dealloc(tx2);
    free(batch);
    free(plain);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: srtp_tool <mode> <128|256> <key hex|payload> <salt hex|packets>\n");
        return 1;
    }
    srtp_err_status_t st = srtp_init();
    if (st != srtp_err_status_ok)
        die("srtp_init", st);
    int bits = atoi(argv[2]);
    if (bits != 128 && bits != 256) {
        fprintf(stderr, "srtp_tool: suite must be 128 or 256\n");
        return 1;
    }
    if (strcmp(argv[1], "bench") == 0)
        return bench(bits, atoi(argv[3]), atol(argv[4]));

    uint8_t key_and_salt[44];
    int key_len = unhex(argv[3], key_and_salt, 32);
    if (key_len != bits / 8) {
        fprintf(stderr, "srtp_tool: bad key\n");
        return 1;
    }
    if (unhex(argv[4], key_and_salt + key_len, 12) != 12) {
        fprintf(stderr, "srtp_tool: salt must be 12 bytes\n");
        return 1;
    }
    const char *mode = argv[1];
    int outbound = strncmp(mode, "protect", 7) == 0;
    int rtcp = strstr(mode, "rtcp") != NULL;
    srtp_t session = make_session(bits, key_and_salt, outbound);

    static char line[2 * MAX_PACKET + 16];
    static uint8_t buf[MAX_PACKET + SRTP_MAX_TRAILER_LEN + 16];
    while (fgets(line, sizeof line, stdin)) {
        int len = unhex(line, buf, MAX_PACKET);
        if (len < 0) {
            printf("ERR badhex\n");
            fflush(stdout);
            continue;
        }
        if (outbound)
            st = rtcp ? srtp_protect_rtcp(session, buf, &len) : srtp_protect(session, buf, &len);
        else
            st = rtcp ? srtp_unprotect_rtcp(session, buf, &len)
                      : srtp_unprotect(session, buf, &len);
        if (st != srtp_err_status_ok) {
            printf("ERR %d\n", (int)st);
        } else {
            printf("OK ");
            for (int i = 0; i < len; i++)
                printf("%02x", buf[i]);
            printf("\n");
        }
        fflush(stdout);
    }
    srtp_dealloc(session);
    return 0;
}
