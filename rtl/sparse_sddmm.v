// sparse_sddmm.v -- the ViTCoD sparser engine's SDDMM unit: S[e] = q_{i_e} . k_{j_e} for every
// nonzero e of a CSR mask (rows x cols, nnz nonzeros), in CSR order, on L lines of W MACs.
//
// The cycle timing is the contract in hw_models/engines/sparse_attention.py (module docstring,
// "SDDMM"; SDDMMStepper is the register-level reference):
//   edge 0 samples start with the header (rows, nnz, d); wave w issues at s_w
//   (wave_issue_edges); beat b of a wave presents the Q/K addresses in the cycle after edge
//   s_w + b, the operand registers hold the data after s_w + b + 1, the W products and their
//   adder tree are registered at s_w + b + 2, the accumulators take (b == 0 ? 0 : acc) + sum at
//   s_w + b + 3 and the wave's L scores are written as one word at s_w + C + 3; done is high in the
//   cycle after the last wave's write:   cycles = s_last + C + 3   (nnz == 0: cycles = 1).
//
// Buffers (the host fills them through the write ports while busy = 0, before start):
//   pointer buffer  word b = row_ptr[R*b+1 .. R*b+R]  (R lanes of PW bits; row_ptr[0] = 0 implied)
//   index buffer    word w = col_idx[w*L .. w*L+L-1]  (L lanes of CW bits)
//   Q buffer        word i*CMAX + c = q[i, c*W .. c*W+W-1]  (W lanes of IN_W bits, signed)
//   K buffer        word j*CMAX + c = k[j, c*W .. c*W+W-1]
//   score buffer    word w = S[w*L .. w*L+L-1]  (L lanes of ACC_W bits, two's complement, wrapped;
//                   lanes past nnz in the last word read 0), read through s_re / s_raddr -> s_rdata
//                   one cycle later while busy = 0.
// Q and K have one W-wide read port per line: each is L replicas of sram_dp written together.
// Lanes at or beyond d read as 0 (masked), so the host may leave them at any value.
// DONE_DELAY = 1 is a deliberately broken build (done one cycle late) used to test the tests.
`default_nettype none
module sparse_sddmm #(
    parameter integer L          = 4,
    parameter integer W          = 4,
    parameter integer R          = 2,
    parameter integer DMAX       = 8,
    parameter integer MAX_ROWS   = 16,
    parameter integer MAX_COLS   = 16,
    parameter integer MAX_NNZ    = MAX_ROWS * MAX_COLS,
    parameter integer IN_W       = 8,
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
    parameter integer QAW  = (MAX_ROWS * CMAX > 1) ? $clog2(MAX_ROWS * CMAX) : 1,
    parameter integer KAW  = (MAX_COLS * CMAX > 1) ? $clog2(MAX_COLS * CMAX) : 1
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
    input  wire                 q_we,
    input  wire [QAW-1:0]       q_waddr,
    input  wire [W*IN_W-1:0]    q_wdata,
    input  wire                 k_we,
    input  wire [KAW-1:0]       k_waddr,
    input  wire [W*IN_W-1:0]    k_wdata,
    input  wire                 s_re,
    input  wire [NAW-1:0]       s_raddr,
    output wire [L*ACC_W-1:0]   s_rdata
);
    localparam integer RW  = (MAX_ROWS > 1) ? $clog2(MAX_ROWS) : 1;
    localparam integer BW  = (CMAX > 1) ? $clog2(CMAX) : 1;
    localparam integer PRW = 2 * IN_W;                     // an exact signed product
    localparam [QAW-1:0] CMAX_Q = CMAX[QAW-1:0];
    localparam [KAW-1:0] CMAX_K = CMAX[KAW-1:0];

    // ================================================================ front end
    wire              fin;            // the last wave's score word is written at the coming edge
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

    // ================================================================ operand buffers
    // addresses presented in the cycle after edge s_w + b; data on rdata after s_w + b + 1
    wire [L*W*IN_W-1:0] q_rdata, k_rdata;
    wire [QAW-1:0]      beat_q = {{(QAW-BW){1'b0}}, beat};
    wire [KAW-1:0]      beat_k = {{(KAW-BW){1'b0}}, beat};
    genvar gl, gi;
    generate
        for (gl = 0; gl < L; gl = gl + 1) begin : g_buf
            wire [QAW-1:0] row_q = {{(QAW-RW){1'b0}}, ln_row[gl*RW +: RW]};
            wire [KAW-1:0] col_k = {{(KAW-CW){1'b0}}, ln_col[gl*CW +: CW]};
            sram_dp #(.WIDTH(W*IN_W), .DEPTH(MAX_ROWS*CMAX), .AW(QAW)) u_q (
                .clk(clk), .we(q_we), .waddr(q_waddr), .wdata(q_wdata),
                .re(active), .raddr(row_q * CMAX_Q + beat_q), .rdata(q_rdata[gl*W*IN_W +: W*IN_W]));
            sram_dp #(.WIDTH(W*IN_W), .DEPTH(MAX_COLS*CMAX), .AW(KAW)) u_k (
                .clk(clk), .we(k_we), .waddr(k_waddr), .wdata(k_wdata),
                .re(active), .raddr(col_k * CMAX_K + beat_k), .rdata(k_rdata[gl*W*IN_W +: W*IN_W]));
        end
    endgenerate

    // side band of the operand registers (edge s_w + b + 1)
    reg              op_v, op_first, op_last, op_final;
    reg  [L-1:0]     op_lv;
    reg  [W-1:0]     op_mask;
    always @(posedge clk) begin
        if (rst) op_v <= 1'b0;
        else     op_v <= active;
        op_first <= (beat == {BW{1'b0}});
        op_last  <= beat_last;
        op_final <= w_final;
        op_lv    <= ln_valid;
        op_mask  <= lane_mask;
    end

    // ================================================================ products + adder tree
    // (registered at s_w + b + 2); idle lines and lanes >= d contribute 0
    wire [L*W*ACC_W-1:0] terms;
    generate
        for (gl = 0; gl < L; gl = gl + 1) begin : g_line
            for (gi = 0; gi < W; gi = gi + 1) begin : g_mac
                wire [IN_W-1:0] qa = q_rdata[(gl*W+gi)*IN_W +: IN_W];
                wire [IN_W-1:0] kb = k_rdata[(gl*W+gi)*IN_W +: IN_W];
                /* verilator lint_off WIDTHEXPAND */
                wire signed [PRW-1:0] prod = $signed(qa) * $signed(kb);
                /* verilator lint_on WIDTHEXPAND */
                wire [ACC_W-1:0] term;
                pe_resize #(.IW(PRW), .OW(ACC_W)) u_rs (
                    .x((op_lv[gl] && op_mask[gi]) ? prod : {PRW{1'b0}}), .y(term));
                assign terms[(gl*W+gi)*ACC_W +: ACC_W] = term;
            end
        end
    endgenerate

    reg  [L*ACC_W-1:0] sum_n, pr_sum;
    reg                pr_v, pr_first, pr_last, pr_final;
    integer            l, i;
    always @* begin
        for (l = 0; l < L; l = l + 1) begin
            sum_n[l*ACC_W +: ACC_W] = {ACC_W{1'b0}};
            for (i = 0; i < W; i = i + 1)
                sum_n[l*ACC_W +: ACC_W] = sum_n[l*ACC_W +: ACC_W] + terms[(l*W+i)*ACC_W +: ACC_W];
        end
    end
    always @(posedge clk) begin
        if (rst) pr_v <= 1'b0;
        else     pr_v <= op_v;
        pr_sum   <= sum_n;
        pr_first <= op_first;
        pr_last  <= op_last;
        pr_final <= op_final;
    end

    // ================================================================ accumulators (s_w + b + 3)
    reg  [L*ACC_W-1:0] acc;
    reg                pend, pend_final;     // a wave's scores are complete in acc
    reg  [NAW-1:0]     wcnt;                 // score-buffer word of the next write
    integer            a;
    always @(posedge clk) begin
        if (rst) begin
            pend <= 1'b0;
        end else begin
            pend <= pr_v && pr_last;
        end
        pend_final <= pr_final;
        if (pr_v) begin
            for (a = 0; a < L; a = a + 1)
                acc[a*ACC_W +: ACC_W] <= (pr_first ? {ACC_W{1'b0}} : acc[a*ACC_W +: ACC_W])
                                         + pr_sum[a*ACC_W +: ACC_W];
        end
        if (start && !busy) wcnt <= {NAW{1'b0}};
        else if (pend) wcnt <= wcnt + 1'b1;
    end

    // ================================================================ score buffer (s_w + C + 3)
    assign fin = pend && pend_final;
    sram_dp #(.WIDTH(L*ACC_W), .DEPTH(ND), .AW(NAW)) u_sbuf (
        .clk(clk), .we(pend), .waddr(wcnt), .wdata(acc),
        .re(s_re && !busy), .raddr(s_raddr), .rdata(s_rdata));

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

    // (the wave flags and the value-buffer port are the SpMM's)
    wire unused = &{1'b0, issue, w_first_cont, w_last_cont, nz_re, nz_raddr};
endmodule
`default_nettype wire
