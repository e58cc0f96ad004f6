// sparse_spmm.v -- the ViTCoD sparser engine's SpMM unit: O[i, :] += sum_e A[e] * V[j_e, :] over
// the nonzeros e of a CSR mask (values A in CSR order), on L lines of W MACs.
//
// The cycle timing is the contract in hw_models/engines/sparse_attention.py (module docstring,
// "SpMM"; SpMMStepper is the register-level reference):
//   edge 0 samples start with the header (rows, nnz, d); wave w issues at s_w
//   (wave_issue_edges); beat b presents the V addresses in the cycle after edge s_w + b, the
//   operand registers hold the data after s_w + b + 1, the W products A[e] * V[j_e, slice b] of
//   every line are registered at s_w + b + 2; a segmented reduction over the lines (a Kogge-Stone
//   segmented scan: lines of one row are contiguous, the row sum lands on its last line) has
//   T = ceil(log2 L) register stages, so the per-row sums are registered at s_w + b + 2 + T; at
//   s_w + b + 3 + T the merge stage adds the carry register (slice b) to the wave's first row if it
//   began in an earlier wave, stores the last row's sum into the carry register if that row
//   continues into the next wave, and writes every other row through the output buffer's
//   accumulate port (O[row, slice b] += sum: L read-modify-write ports, the old word is read one
//   cycle ahead). done is high in the cycle after the last wave's last write:
//       cycles = s_last + C + 2 + T   (nnz == 0: cycles = 1, nothing written).
//
// Buffers (the host fills them through the write ports while busy = 0, before start):
//   pointer buffer  word b = row_ptr[R*b+1 .. R*b+R]  (R lanes of PW bits; row_ptr[0] = 0 implied)
//   index buffer    word w = col_idx[w*L .. w*L+L-1]  (L lanes of CW bits)
//   value buffer    word w = A[w*L .. w*L+L-1]        (L lanes of VAL_W bits; unsigned unless
//                   VAL_SIGNED = 1), read with the index buffer and latched at the issue edge
//   V buffer        word j*CMAX + c = V[j, c*W .. c*W+W-1]  (W lanes of IN_W bits, signed; one
//                   W-wide read port per line: L replicas of sram_dp written together)
//   output buffer   word i*CMAX + c = O[i, c*W .. c*W+W-1]  (W lanes of ACC_W bits, wrapping); the
//                   host writes the initial O (o_we) and reads the result (o_re -> o_rdata one
//                   cycle later) while busy = 0. Lanes at or beyond d are never changed.
// DONE_DELAY = 1 is a deliberately broken build (done one cycle late) used to test the tests.
`default_nettype none
module sparse_spmm #(
    parameter integer L          = 4,
    parameter integer W          = 4,
    parameter integer R          = 2,
    parameter integer DMAX       = 8,
    parameter integer MAX_ROWS   = 16,
    parameter integer MAX_COLS   = 16,
    parameter integer MAX_NNZ    = MAX_ROWS * MAX_COLS,
    parameter integer IN_W       = 8,
    parameter integer VAL_W      = 8,
    parameter integer VAL_SIGNED = 0,
    parameter integer ACC_W      = 32,
    parameter integer DONE_DELAY = 0,
    // derived
    parameter integer CMAX = (DMAX + W - 1) / W,
    parameter integer DW   = $clog2(DMAX + 1),
    parameter integer NW   = $clog2(MAX_ROWS + 1),
    parameter integer CW   = (MAX_COLS > 1) ? $clog2(MAX_COLS) : 1,
    parameter integer PW   = $clog2(MAX_NNZ + 1),
    parameter integer PD   = (MAX_ROWS + R - 1) / R,
    parameter integer PAW  = (PD > 1) ? $clog2(PD) : 1,
    parameter integer ND   = (MAX_NNZ + L - 1) / L,
    parameter integer NAW  = (ND > 1) ? $clog2(ND) : 1,
    parameter integer OAW  = (MAX_ROWS * CMAX > 1) ? $clog2(MAX_ROWS * CMAX) : 1,
    parameter integer VAW  = (MAX_COLS * CMAX > 1) ? $clog2(MAX_COLS * CMAX) : 1
) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 start,
    input  wire [NW-1:0]        rows,
    input  wire [PW-1:0]        nnz,
    input  wire [DW-1:0]        d,
    output wire                 done,
    output wire                 busy,
    input  wire                 ptr_we,
    input  wire [PAW-1:0]       ptr_waddr,
    input  wire [R*PW-1:0]      ptr_wdata,
    input  wire                 idx_we,
    input  wire [NAW-1:0]       idx_waddr,
    input  wire [L*CW-1:0]      idx_wdata,
    input  wire                 val_we,
    input  wire [NAW-1:0]       val_waddr,
    input  wire [L*VAL_W-1:0]   val_wdata,
    input  wire                 v_we,
    input  wire [VAW-1:0]       v_waddr,
    input  wire [W*IN_W-1:0]    v_wdata,
    input  wire                 o_we,
    input  wire [OAW-1:0]       o_waddr,
    input  wire [W*ACC_W-1:0]   o_wdata,
    input  wire                 o_re,
    input  wire [OAW-1:0]       o_raddr,
    output reg  [W*ACC_W-1:0]   o_rdata
);
    localparam integer RW  = (MAX_ROWS > 1) ? $clog2(MAX_ROWS) : 1;
    localparam integer BW  = (CMAX > 1) ? $clog2(CMAX) : 1;
    localparam integer T   = (L > 1) ? $clog2(L) : 0;         // reduction register stages
    localparam integer PRW = IN_W + VAL_W + 1;                // an exact product
    localparam integer VW  = W * ACC_W;                       // one row slice
    localparam integer ODEPTH = MAX_ROWS * CMAX;
    localparam [OAW-1:0] CMAX_O = CMAX[OAW-1:0];
    localparam [VAW-1:0] CMAX_V = CMAX[VAW-1:0];

    // ================================================================ front end
    wire              fin;            // the last wave's last slice is merged at the coming edge
    wire              empty_go, issue, active, beat_last, w_first_cont, w_last_cont, w_final;
    wire              nz_re;
    wire [NAW-1:0]    nz_raddr;
    wire [BW-1:0]     beat;
    wire [W-1:0]      lane_mask;
    wire [L-1:0]      ln_valid;
    wire [L*RW-1:0]   ln_row;
    wire [L*CW-1:0]   ln_col;

    sparse_frontend #(.L(L), .W(W), .R(R), .DMAX(DMAX), .MAX_ROWS(MAX_ROWS), .MAX_COLS(MAX_COLS),
                      .MAX_NNZ(MAX_NNZ)) u_fe (
        .clk(clk), .rst(rst), .start(start), .rows(rows), .nnz(nnz), .d(d), .finish(fin),
        .busy(busy), .empty_go(empty_go),
        .ptr_we(ptr_we), .ptr_waddr(ptr_waddr), .ptr_wdata(ptr_wdata),
        .idx_we(idx_we), .idx_waddr(idx_waddr), .idx_wdata(idx_wdata),
        .nz_re(nz_re), .nz_raddr(nz_raddr), .issue(issue),
        .active(active), .beat(beat), .beat_last(beat_last), .lane_mask(lane_mask),
        .ln_valid(ln_valid), .ln_row(ln_row), .ln_col(ln_col),
        .w_first_cont(w_first_cont), .w_last_cont(w_last_cont), .w_final(w_final));

    // values: word w is on the value-buffer output when wave w issues; the lines latch it
    wire [L*VAL_W-1:0] val_rdata;
    reg  [L*VAL_W-1:0] ln_val;
    sram_dp #(.WIDTH(L*VAL_W), .DEPTH(ND), .AW(NAW)) u_valbuf (
        .clk(clk), .we(val_we), .waddr(val_waddr), .wdata(val_wdata),
        .re(nz_re), .raddr(nz_raddr), .rdata(val_rdata));
    always @(posedge clk) if (issue) ln_val <= val_rdata;

    // ================================================================ V buffer
    wire [L*W*IN_W-1:0] v_rdata;
    wire [VAW-1:0]      beat_v = {{(VAW-BW){1'b0}}, beat};
    genvar gl, gi, gs;
    generate
        for (gl = 0; gl < L; gl = gl + 1) begin : g_buf
            wire [VAW-1:0] col_v = {{(VAW-CW){1'b0}}, ln_col[gl*CW +: CW]};
            sram_dp #(.WIDTH(W*IN_W), .DEPTH(MAX_COLS*CMAX), .AW(VAW)) u_v (
                .clk(clk), .we(v_we), .waddr(v_waddr), .wdata(v_wdata),
                .re(active), .raddr(col_v * CMAX_V + beat_v), .rdata(v_rdata[gl*W*IN_W +: W*IN_W]));
        end
    endgenerate

    // ================================================================ side band
    // stage s is registered at edge s_w + b + 1 + s: 0 operands, 1 products, 1 + k tree level k;
    // the merge reads stage T + 1, the output buffer's read port stage T
    // (packed: field of stage s at [s*width +: width])
    localparam integer NS = T + 2;
    reg  [NS-1:0]       sb_v, sb_last, sb_final, sb_fc, sb_lc;
    reg  [NS*BW-1:0]    sb_beat;
    reg  [NS*L-1:0]     sb_lv;
    reg  [NS*L*RW-1:0]  sb_row;
    reg  [W-1:0]        op_mask;
    reg  [L*VAL_W-1:0]  op_val;
    always @(posedge clk) begin
        sb_v     <= rst ? {NS{1'b0}} : {sb_v[NS-2:0], active};
        sb_last  <= {sb_last[NS-2:0], beat_last};
        sb_final <= {sb_final[NS-2:0], w_final};
        sb_fc    <= {sb_fc[NS-2:0], w_first_cont};
        sb_lc    <= {sb_lc[NS-2:0], w_last_cont};
        sb_beat  <= {sb_beat[(NS-1)*BW-1:0], beat};
        sb_lv    <= {sb_lv[(NS-1)*L-1:0], ln_valid};
        sb_row   <= {sb_row[(NS-1)*L*RW-1:0], ln_row};
        op_mask  <= lane_mask;
        op_val   <= ln_val;
    end

    // ================================================================ products (s_w + b + 2)
    wire [L*VW-1:0] prod_n;
    generate
        for (gl = 0; gl < L; gl = gl + 1) begin : g_line
            wire [VAL_W-1:0] av = op_val[gl*VAL_W +: VAL_W];
            wire [VAL_W:0]   ax = {(VAL_SIGNED != 0) && av[VAL_W-1], av};
            for (gi = 0; gi < W; gi = gi + 1) begin : g_mac
                wire [IN_W-1:0] vb = v_rdata[(gl*W+gi)*IN_W +: IN_W];
                /* verilator lint_off WIDTHEXPAND */
                wire signed [PRW-1:0] prod = $signed(ax) * $signed(vb);
                /* verilator lint_on WIDTHEXPAND */
                pe_resize #(.IW(PRW), .OW(ACC_W)) u_rs (
                    .x((sb_lv[gl] && op_mask[gi]) ? prod : {PRW{1'b0}}),
                    .y(prod_n[(gl*W+gi)*ACC_W +: ACC_W]));
            end
        end
    endgenerate

    // ================================================================ segmented scan (T levels)
    // level 0 = the product registers; line l starts a segment when l == 0 or its row differs
    // from line l-1's. Level k (distance 2^(k-1)): a line whose span has not reached its segment
    // start adds the span 2^(k-1) lines to its left. After T levels every line holds the sum from
    // its segment start to itself, so a segment's last line holds the row sum.
    reg [L-1:0] seg_start;
    integer     l;
    always @* begin
        for (l = 0; l < L; l = l + 1)
            seg_start[l] = (l == 0) ||
                           (sb_row[L*RW + l*RW +: RW] != sb_row[L*RW + ((l == 0) ? 0 : l - 1)*RW +: RW]);
    end
    generate
        for (gs = 0; gs <= T; gs = gs + 1) begin : g_lvl
            wire [L*VW-1:0] x;          // the line sums after gs levels (stage 1 + gs)
            wire [L-1:0]    f;          // their "segment start reached" flags
            if (gs == 0) begin : g_prod
                reg [L*VW-1:0] xq;
                always @(posedge clk) xq <= prod_n;
                assign x = xq;
                assign f = seg_start;
            end else begin : g_scan
                localparam integer DIST = 1 << (gs - 1);
                wire [L*VW-1:0] xp = g_lvl[gs-1].x;
                wire [L-1:0]    fp = g_lvl[gs-1].f;
                reg  [L*VW-1:0] xn, xq;
                reg  [L-1:0]    fn, fq;
                integer         m, q;
                always @* begin
                    for (m = 0; m < L; m = m + 1) begin
                        xn[m*VW +: VW] = xp[m*VW +: VW];
                        fn[m] = fp[m];
                        if (m >= DIST && !fp[m]) begin
                            for (q = 0; q < W; q = q + 1)
                                xn[m*VW + q*ACC_W +: ACC_W] = xp[m*VW + q*ACC_W +: ACC_W]
                                    + xp[((m >= DIST) ? m - DIST : 0)*VW + q*ACC_W +: ACC_W];
                            fn[m] = fp[(m >= DIST) ? m - DIST : 0];
                        end
                    end
                end
                always @(posedge clk) begin
                    xq <= xn;
                    fq <= fn;
                end
                assign x = xq;
                assign f = fq;
            end
        end
    endgenerate

    // ================================================================ output buffer + merge
    // L read-modify-write ports: line l's old word is read in the cycle before its merge
    // (address from side-band stage T), the sum is written at the merge edge
    reg  [VW-1:0]   omem [0:ODEPTH-1];
    reg  [L*VW-1:0] o_old;
    reg  [VW-1:0]   carry [0:(1 << BW)-1];
    wire [L*RW-1:0] rd_row  = sb_row[T*L*RW +: L*RW];
    wire [OAW-1:0]  rd_beat = {{(OAW-BW){1'b0}}, sb_beat[T*BW +: BW]};

    wire [L*VW-1:0] xs   = g_lvl[T].x;     // segment sums on the segments' last lines
    wire [L-1:0]    mlv  = sb_lv[(T+1)*L +: L];
    wire [L*RW-1:0] mrow = sb_row[(T+1)*L*RW +: L*RW];
    wire [BW-1:0]   mbeat = sb_beat[(T+1)*BW +: BW];
    wire            mv   = sb_v[T+1];
    wire [OAW-1:0]  wr_beat = {{(OAW-BW){1'b0}}, mbeat};
    reg  [L-1:0]    o_wen;                 // line l writes O[row_l, slice b] at the coming edge
    reg  [L*OAW-1:0] o_wa;
    reg  [L*VW-1:0] o_wd;
    reg             carry_we;
    reg  [VW-1:0]   carry_wd;
    reg  [VW-1:0]   merged, cin;
    reg             tail, lastline;
    reg  [L:0]      lv_x;                  // valid bits with a 0 past line L-1
    reg  [RW-1:0]   row_l, row_n;
    integer         c, p;
    always @* begin
        o_wen    = {L{1'b0}};
        o_wa     = {(L*OAW){1'b0}};
        o_wd     = {(L*VW){1'b0}};
        carry_we = 1'b0;
        carry_wd = {VW{1'b0}};
        lv_x     = {1'b0, mlv};
        cin      = carry[mbeat];
        for (c = 0; c < L; c = c + 1) begin
            row_l    = mrow[c*RW +: RW];
            row_n    = mrow[((c + 1 < L) ? c + 1 : c)*RW +: RW];
            lastline = lv_x[c] && !lv_x[c+1];
            tail     = lastline || (lv_x[c] && (row_n != row_l));
            merged   = xs[c*VW +: VW];
            if (sb_fc[T+1] && (row_l == mrow[0 +: RW])) begin
                for (p = 0; p < W; p = p + 1)
                    merged[p*ACC_W +: ACC_W] = merged[p*ACC_W +: ACC_W] + cin[p*ACC_W +: ACC_W];
            end
            if (mv && lastline && sb_lc[T+1]) begin
                carry_we = 1'b1;
                carry_wd = merged;
            end else if (mv && tail) begin
                o_wen[c] = 1'b1;
                o_wa[c*OAW +: OAW] = {{(OAW-RW){1'b0}}, row_l} * CMAX_O + wr_beat;
                for (p = 0; p < W; p = p + 1)
                    o_wd[c*VW + p*ACC_W +: ACC_W] = o_old[c*VW + p*ACC_W +: ACC_W]
                                                    + merged[p*ACC_W +: ACC_W];
            end
        end
    end
    assign fin = mv && sb_final[T+1] && sb_last[T+1];
    wire unused_flags = &{1'b0, g_lvl[T].f};   // the last level's flags are not needed

    integer b;
    always @(posedge clk) begin
        for (b = 0; b < L; b = b + 1) begin
            if (o_wen[b]) omem[o_wa[b*OAW +: OAW]] <= o_wd[b*VW +: VW];
            o_old[b*VW +: VW] <= omem[{{(OAW-RW){1'b0}}, rd_row[b*RW +: RW]} * CMAX_O + rd_beat];
        end
        if (o_we && !busy) omem[o_waddr] <= o_wdata;
        if (o_re && !busy) o_rdata <= omem[o_raddr];
        if (carry_we) carry[mbeat] <= carry_wd;
    end

    // ================================================================ done
    reg done_r;
    always @(posedge clk) done_r <= rst ? 1'b0 : (fin || empty_go);
    generate
        if (DONE_DELAY == 0) begin : g_done
            assign done = done_r;
        end else begin : g_done_late
            reg done_d;
            always @(posedge clk) done_d <= rst ? 1'b0 : done_r;
            assign done = done_d;
        end
    endgenerate
endmodule
`default_nettype wire
